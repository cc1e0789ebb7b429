"""Plain-torch CROWN-IBP: the bounds and their gradients are auto_LiRPA's, and they hold at sampled points."""
import pytest
import torch
from torch import nn

from maar_plugin.bounds.crown import crown_lower, supports_crown
from maar_plugin.bounds.ibp import interval_bounds_with_trace
from maar_plugin.bounds.lirpa import LirpaBounds
from maar_plugin.bounds.specs import margin_spec, pairwise_spec
from maar_plugin.errors import MaarError
from maar_plugin.models import Normalize

CLASSES = 5


def _mlp(channels: int) -> nn.Sequential:
    return nn.Sequential(Normalize([0.4] * channels, [0.3 + 0.1 * c for c in range(channels)]), nn.Flatten(),
                         nn.Linear(channels * 64, 20), nn.ReLU(), nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, CLASSES))


def _conv_bn(channels: int) -> nn.Sequential:
    """Strides, padding, dilation and groups that leave an odd output size (transposed convolution's padding)."""
    return nn.Sequential(
        Normalize([0.5] * channels, [0.25 + 0.1 * c for c in range(channels)]),
        nn.Conv2d(channels, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=1, padding=2, dilation=2, groups=2), nn.ReLU(),
        nn.Conv2d(6, 4, 2, stride=2), nn.ReLU(), nn.Flatten(),
        nn.Linear(16, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, CLASSES))


def _normalize_inside(channels: int) -> nn.Sequential:
    """Normalize after the first layer: carried back through, not applied to the box."""
    return nn.Sequential(nn.Conv2d(channels, 3, 3, stride=2), nn.ReLU(), Normalize([0.1, 0.2, 0.3], [0.5, 1.0, 2.0]),
                         nn.Flatten(), nn.Linear(27, 10), nn.ReLU(), nn.Linear(10, CLASSES))


def _trained_statistics(model: nn.Sequential, channels: int) -> nn.Sequential:
    with torch.no_grad():
        model.train()(torch.rand(64, channels, 8, 8))
    return model


MODELS = [_mlp, _conv_bn, _normalize_inside]


def _box(batch: int, channels: int, eps: float = 0.05):
    x = torch.rand(batch, channels, 8, 8)
    return x, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def _plain_crown_ibp(model, lower, upper, spec):
    _, trace = interval_bounds_with_trace(model, lower, upper)
    return crown_lower(model, lower, upper, spec, trace)


@pytest.mark.parametrize("make_model", MODELS)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("shared_spec", [False, True])
def test_bounds_and_gradients_are_auto_lirpas(make_model, channels, shared_spec):
    """In train mode (auto_LiRPA 0.3 bounds without gradients in eval mode): with ``clean`` omitted both
    normalise with the box centres' batch statistics."""
    torch.manual_seed(0)
    model = make_model(channels).train()
    x, lower, upper = _box(6, channels)
    spec = pairwise_spec(CLASSES, 1) if shared_spec else margin_spec(torch.randint(0, CLASSES, (6,)), CLASSES)
    weights = torch.rand(6, spec.shape[1])
    reference = LirpaBounds(model, x[:1]).bounds(lower, upper, spec, "CROWN-IBP", bound_upper=False)[0]
    reference_gradients = torch.autograd.grad((weights * reference).sum(), list(model.parameters()),
                                              allow_unused=True)
    plain = _plain_crown_ibp(model, lower, upper, spec)
    plain_gradients = torch.autograd.grad((weights * plain).sum(), list(model.parameters()), allow_unused=True)
    assert torch.allclose(plain, reference, atol=1e-5)
    scale = max(gradient.abs().max() for gradient in reference_gradients if gradient is not None)
    for (name, _), ours, theirs in zip(model.named_parameters(), plain_gradients, reference_gradients):
        theirs = torch.zeros_like(ours) if theirs is None else theirs
        assert (ours - theirs).abs().max() <= 1e-4 * scale, name  # float32 round-off (BatchNorm of 6 examples)


@pytest.mark.parametrize("channels", [1, 3])
def test_eval_mode_bounds_are_auto_lirpas(channels):
    """Eval-mode BatchNorm: the running statistics in both passes."""
    torch.manual_seed(1)
    model = _trained_statistics(_conv_bn(channels), channels).eval()
    x, lower, upper = _box(8, channels)
    spec = margin_spec(torch.randint(0, CLASSES, (8,)), CLASSES)
    with torch.no_grad():
        reference = LirpaBounds(model, x[:1]).bounds(lower, upper, spec, "CROWN-IBP", bound_upper=False)[0]
        assert torch.allclose(_plain_crown_ibp(model, lower, upper, spec), reference, atol=1e-5)


@pytest.mark.parametrize("make_model", MODELS)
def test_bounds_hold_at_sampled_points_and_corners(make_model):
    torch.manual_seed(2)
    model = _trained_statistics(make_model(3), 3).eval()
    x, lower, upper = _box(4, 3, eps=0.1)
    spec = pairwise_spec(CLASSES, 4)
    with torch.no_grad():
        bound = _plain_crown_ibp(model, lower, upper, spec)
        for corners in (False, True):
            fractions = torch.rand(64, *x.shape)
            points = lower + (upper - lower) * (fractions.round() if corners else fractions)
            values = torch.einsum("bsk,nbk->nbs", spec, model(points.flatten(0, 1)).view(64, 4, CLASSES))
            assert (bound <= values + 1e-5).all()
    assert (bound < values.min(0).values - 1e-3).any()  # a bound, not the sampled minimum


def test_unsupported_models_are_refused():
    same_padding = nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"), nn.ReLU(), nn.Flatten(), nn.Linear(128, 2))
    assert not supports_crown(same_padding) and not supports_crown(nn.Linear(4, 2))
    assert supports_crown(_conv_bn(1))
    _, lower, upper = _box(1, 1)
    _, trace = interval_bounds_with_trace(same_padding, lower, upper)
    with pytest.raises(MaarError, match="plain-torch CROWN needs"):
        crown_lower(same_padding, lower, upper, torch.eye(2)[None], trace)
