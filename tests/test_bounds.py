"""Specification matrices and the LirpaBounds wrapper's plumbing (soundness is in test_lirpa_compat.py)."""
import time

import pytest
import torch
from torch import nn

from maar_plugin.bounds.lirpa import LirpaBounds
from maar_plugin.bounds.specs import (
    margin_spec,
    margins_from_pairwise,
    pairwise_matrix,
    pairwise_spec,
    pairwise_upper_from_lower,
)
from maar_plugin.errors import MaarError


def test_margin_spec_rows_are_true_minus_other_logits():
    torch.manual_seed(0)
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 4, 2, 2])
    margins = torch.einsum("bsk,bk->bs", margin_spec(labels, 5), logits)
    for b, label in enumerate(labels.tolist()):
        expected = [logits[b, label] - logits[b, j] for j in range(5) if j != label]
        assert torch.allclose(margins[b], torch.stack(expected))


def test_pairwise_spec_and_matrix_give_all_logit_differences():
    torch.manual_seed(1)
    logits = torch.randn(3, 4)
    values = torch.einsum("bsk,bk->bs", pairwise_spec(4, 3), logits)
    matrix = pairwise_matrix(values, 4)
    assert torch.allclose(matrix, logits[:, :, None] - logits[:, None, :])
    assert pairwise_spec(4, 3).shape == (3, 12, 4)


def test_margins_and_upper_bounds_are_read_off_the_pairwise_rows():
    torch.manual_seed(2)
    logits = torch.randn(4, 5)
    labels = torch.tensor([3, 0, 4, 3])
    values = pairwise_matrix(torch.einsum("bsk,bk->bs", pairwise_spec(5, 4), logits), 5)
    margins = torch.einsum("bsk,bk->bs", margin_spec(labels, 5), logits)
    assert torch.allclose(margins_from_pairwise(values, labels), margins)
    # at a point, lower = upper = the value: ub(z_j − z_k) must come out as z_j − z_k
    assert torch.allclose(pairwise_upper_from_lower(values), logits[:, :, None] - logits[:, None, :])


def test_a_shared_spec_broadcasts_over_the_batch():
    model = _conv_bn().eval()
    x, lower, upper = _box(3)
    bounder = LirpaBounds(model, x[:1])
    shared, _ = bounder.bounds(lower, upper, pairwise_spec(4, 1), "CROWN", bound_upper=False)
    per_example, _ = bounder.bounds(lower, upper, pairwise_spec(4, 3), "CROWN", bound_upper=False)
    assert torch.allclose(shared, per_example)


def _conv_bn() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, stride=2), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 4)
    )


def _box(batch: int, eps: float = 0.05):
    x = torch.rand(batch, 1, 8, 8)
    return x, (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def test_one_ibp_pass_gives_the_separate_ibp_and_crown_ibp_bounds_of_different_specs():
    model = _conv_bn().eval()
    x, lower, upper = _box(5)
    spec = margin_spec(torch.randint(0, 4, (5,)), 4)
    bounder = LirpaBounds(model, x[:2])  # a different batch size than later calls
    ibp, crown_ibp = bounder.ibp_and_crown_ibp_lower(lower, upper, pairwise_spec(4, 1), spec)
    assert torch.allclose(ibp, bounder.bounds(lower, upper, pairwise_spec(4, 5), "IBP")[0])
    assert torch.allclose(crown_ibp, bounder.bounds(lower, upper, spec, "CROWN-IBP", bound_upper=False)[0])


def test_train_mode_bounds_use_the_centres_batch_statistics_and_reach_every_parameter():
    model = _conv_bn().train()
    x, lower, upper = _box(6)
    bounder = LirpaBounds(model, x[:1])
    for method in ("IBP", "CROWN-IBP"):
        model.zero_grad()
        bound_lower, bound_upper = bounder.bounds(lower, upper, None, method)
        centre_logits = model((lower + upper) / 2)  # BatchNorm with the same (centre) batch statistics
        assert (bound_lower <= centre_logits + 1e-5).all() and (centre_logits <= bound_upper + 1e-5).all()
        (bound_upper - 2 * bound_lower).sum().backward()
        assert all(p.grad is not None for p in model.parameters())
        # every parameter but the conv bias, which the BatchNorm after it cancels, gets a gradient
        assert all(p.grad.abs().sum() > 0 for name, p in model.named_parameters() if name != "0.bias")


def test_eval_mode_bounds_follow_the_models_running_statistics_and_keep_it_trainable():
    model = _conv_bn().train()
    x, lower, upper = _box(4, eps=0.0)
    bounder = LirpaBounds(model, x[:1])
    with torch.no_grad():
        model(torch.rand(32, 1, 8, 8) * 3)  # running statistics move after the wrapper was built
    model.eval()
    bound_lower, bound_upper = bounder.bounds(lower, upper, None, "CROWN")
    assert torch.allclose(bound_lower, model(x), atol=1e-5) and torch.allclose(bound_upper, model(x), atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


def test_alpha_crown_runs_under_no_grad():
    model = _conv_bn().eval()
    x, lower, upper = _box(2)
    with torch.no_grad():
        bound_lower, _ = LirpaBounds(model, x[:1], alpha_iterations=2).bounds(lower, upper, None, "alpha-CROWN")
    assert not bound_lower.requires_grad


def _alpha_lower(iterations: int, **stop) -> torch.Tensor:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)).eval()
    x = torch.rand(1, 6)
    with torch.no_grad():
        lower, _ = LirpaBounds(model, x, alpha_iterations=iterations).bounds(
            x - 0.3, x + 0.3, None, "alpha-CROWN", bound_upper=False, **stop)
    samples = x - 0.3 + 0.6 * torch.rand(2000, 6)
    with torch.no_grad():
        assert torch.all(lower <= model(samples).min(dim=0).values + 1e-5)   # sound wherever it stopped
    return lower


def test_alpha_crown_stops_at_its_deadline_or_once_every_bound_is_enough():
    full, one_step = _alpha_lower(30), _alpha_lower(1)
    assert torch.all(full >= one_step - 1e-6) and torch.any(full > one_step + 1e-4)   # optimisation helps here
    assert torch.allclose(_alpha_lower(30, deadline=0.0), one_step)                  # past deadline: first step
    assert torch.allclose(_alpha_lower(30, enough=torch.full((1, 3), -1e9)), one_step)
    assert torch.allclose(_alpha_lower(30, deadline=time.monotonic() + 3600, enough=torch.full((1, 3), 1e9)), full)


def test_unknown_method_is_a_user_error():
    model = _conv_bn().eval()
    x, lower, upper = _box(1)
    with pytest.raises(MaarError, match="unknown bound method"):
        LirpaBounds(model, x).bounds(lower, upper, None, "DeepPoly")
