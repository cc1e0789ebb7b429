"""auto_LiRPA through the compatibility layer: every bound method is sound, alpha-CROWN really optimises."""
import pytest
import torch
from packaging.version import Version
from torch import nn

from maar_plugin import lirpa_compat
from maar_plugin.attacks import pgd_maximize
from maar_plugin.bounds.lirpa import METHODS, LirpaBounds
from maar_plugin.bounds.specs import margin_spec

TOLERANCE = 1e-5


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)
    ).eval()


def _conv_bn() -> nn.Module:
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(36, 16), nn.ReLU(), nn.Linear(16, 5),
    )
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8))
    return model.eval()


def _spec_values(model: nn.Module, points: torch.Tensor, spec: torch.Tensor) -> torch.Tensor:
    """spec @ model(points) for points [N, B, ...]: [N, B, S]."""
    with torch.no_grad():
        logits = model(points.flatten(0, 1)).view(points.shape[0], points.shape[1], -1)
    return torch.einsum("bsk,nbk->nbs", spec, logits)


def _pgd_extremes(model: nn.Module, lower, upper, spec, sign: float) -> torch.Tensor:
    """Per row, the value sign·(spec row @ logits) reached by PGD maximising it: [B, S]. Rows ride the batch."""
    batch, rows = spec.shape[:2]
    repeat = lambda box: box.repeat_interleave(rows, dim=0)  # noqa: E731
    flat_spec = spec.reshape(batch * rows, -1)
    objective = lambda logits: sign * (logits * flat_spec).sum(1)  # noqa: E731
    best = pgd_maximize(model, repeat(lower), repeat(upper), objective, steps=20, restarts=2)
    with torch.no_grad():
        return (model(best) * flat_spec).sum(1).view(batch, rows)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("make_model, shape, eps", [(_mlp, (1, 28, 28), 0.01), (_conv_bn, (1, 8, 8), 0.05)])
def test_bounds_contain_sampled_and_pgd_points(method, make_model, shape, eps):
    model = make_model()
    torch.manual_seed(2)
    x = torch.rand(3, *shape)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    labels = model(x).argmax(1)
    spec = margin_spec(labels, model[-1].out_features)
    bound_lower, bound_upper = LirpaBounds(model, x[:1], alpha_iterations=5).bounds(lower, upper, spec, method)

    samples = lower + torch.rand(64, *x.shape) * (upper - lower)
    corners = torch.where(torch.rand(16, *x.shape) < 0.5, lower, upper)
    values = _spec_values(model, torch.cat([samples, corners]), spec)
    assert (values >= bound_lower - TOLERANCE).all()
    assert (values <= bound_upper + TOLERANCE).all()
    assert (_pgd_extremes(model, lower, upper, spec, -1.0) >= bound_lower - TOLERANCE).all()
    assert (_pgd_extremes(model, lower, upper, spec, +1.0) <= bound_upper + TOLERANCE).all()


def test_alpha_crown_is_strictly_tighter_than_crown():
    """Without the slope-projection fix, auto_LiRPA 0.3's alpha-CROWN returns CROWN's bound unchanged."""
    model = _mlp()
    torch.manual_seed(3)
    x = torch.rand(2, 1, 28, 28)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    spec = margin_spec(model(x).argmax(1), 10)
    bounder = LirpaBounds(model, x[:1], alpha_iterations=20)
    crown, _ = bounder.bounds(lower, upper, spec, "CROWN", bound_upper=False)
    alpha_crown, _ = bounder.bounds(lower, upper, spec, "alpha-CROWN", bound_upper=False)
    assert (alpha_crown >= crown - TOLERANCE).all()
    assert (alpha_crown - crown).max() > 1e-3
    assert alpha_crown.sum() > crown.sum() + 1e-3


def test_crown_is_at_least_as_tight_as_ibp_on_this_net():
    model = _mlp()
    x = torch.rand(2, 1, 28, 28)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    spec = margin_spec(model(x).argmax(1), 10)
    bounder = LirpaBounds(model, x[:1])
    ibp, _ = bounder.bounds(lower, upper, spec, "IBP")
    crown, _ = bounder.bounds(lower, upper, spec, "CROWN")
    assert crown.sum() > ibp.sum()


def test_needs_patches_only_for_the_old_pypi_line():
    assert lirpa_compat.needs_patches(Version("0.3"))
    assert lirpa_compat.needs_patches(Version("0.3.1"))
    assert not lirpa_compat.needs_patches(Version("0.7.0"))
    assert not lirpa_compat.needs_patches(None)


def test_apply_is_idempotent():
    import torch.onnx.symbolic_helper as symbolic_helper

    model = _mlp()
    x = torch.rand(2, 1, 28, 28)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    spec = margin_spec(model(x).argmax(1), 10)
    before, _ = LirpaBounds(model, x[:1], alpha_iterations=3).bounds(lower, upper, spec, "alpha-CROWN", False)
    opset_setter, node_getitem = symbolic_helper._set_opset_version, torch._C.Node.__getitem__
    assert lirpa_compat.apply() == lirpa_compat.apply()
    assert symbolic_helper._set_opset_version is opset_setter
    assert torch._C.Node.__getitem__ is node_getitem
    after, _ = LirpaBounds(model, x[:1], alpha_iterations=3).bounds(lower, upper, spec, "alpha-CROWN", False)
    assert torch.allclose(before, after, atol=1e-6)
