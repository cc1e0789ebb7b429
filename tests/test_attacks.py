"""PGD: finds known counterexamples, maximises a known objective, never leaves the box."""
import pytest
import torch
from torch import nn

from maar_plugin.attacks import margin_loss, pgd_attack, pgd_maximize
from maar_plugin.errors import MaarError


def _threshold_net(threshold: float, dim: int = 6) -> nn.Module:
    """Two logits: z0 = 0, z1 = sum(x) − threshold; class 1 wins exactly when sum(x) > threshold."""
    layer = nn.Linear(dim, 2)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[1] = 1.0
        layer.bias.copy_(torch.tensor([0.0, -threshold]))
    return nn.Sequential(nn.Flatten(), layer)


def test_pgd_attack_finds_the_corner_counterexample():
    torch.manual_seed(0)
    x = torch.full((3, 6), 0.5)
    y = torch.zeros(3, dtype=torch.long)
    eps = 0.1
    # sum(x) = 3; the only counterexamples lie near the corner x + eps (sum up to 3.6 > 3.5).
    model = _threshold_net(threshold=3.5)
    adversarial = pgd_attack(model, x, y, eps, steps=10)
    assert (margin_loss(model(adversarial), y) > 0).all()
    assert torch.allclose(adversarial, x + eps)


def test_pgd_attack_keeps_robust_examples_correct():
    torch.manual_seed(0)
    x = torch.full((2, 6), 0.5)
    y = torch.zeros(2, dtype=torch.long)
    model = _threshold_net(threshold=3.7)  # max sum in the ball is 3.6: robust
    adversarial = pgd_attack(model, x, y, 0.1, steps=10, restarts=2, loss="ce")
    assert (model(adversarial).argmax(1) == y).all()
    # ... and the attack still pushed to the worst point, the corner.
    assert torch.allclose(adversarial, x + 0.1)


@pytest.mark.parametrize("loss", ["margin", "ce"])
def test_pgd_attack_never_leaves_ball_or_unit_box(loss):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.rand(8, 12)
    x[0] = 0.0
    x[1] = 1.0
    y = torch.randint(0, 4, (8,))
    eps = 0.2
    adversarial = pgd_attack(model, x, y, eps, steps=7, restarts=3, loss=loss, step_size=1.0)
    assert (adversarial >= 0).all() and (adversarial <= 1).all()
    assert ((adversarial - x).abs() <= eps + 1e-7).all()


def test_pgd_maximize_reaches_the_maximum_of_a_linear_objective():
    torch.manual_seed(2)
    weights = torch.randn(5, 10)
    lower = torch.rand(5, 10) - 1.0
    upper = lower + torch.rand(5, 10)
    identity = nn.Identity()
    best = pgd_maximize(identity, lower, upper, lambda out: (out * weights).sum(1), steps=5)
    assert torch.equal(best, torch.where(weights > 0, upper, lower))


def test_pgd_maximize_keeps_the_given_start_when_it_is_best():
    torch.manual_seed(3)
    lower, upper = torch.zeros(4, 3), torch.ones(4, 3)
    start = torch.full((4, 3), 0.5)
    # Objective peaks at the centre: every step away from the start scores lower.
    best = pgd_maximize(nn.Identity(), lower, upper, lambda out: -(out - 0.5).abs().sum(1),
                        steps=3, restarts=3, step_size=0.3, start=start)
    assert torch.equal(best, start)


def test_pgd_leaves_parameter_gradients_and_mode_alone():
    model = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Linear(3, 2)).eval()
    x = torch.rand(4, 3)
    pgd_attack(model, x, torch.zeros(4, dtype=torch.long), 0.1, steps=2)
    assert not model.training
    assert all(parameter.grad is None for parameter in model.parameters())


def test_pgd_rejects_bad_arguments():
    with pytest.raises(MaarError):
        pgd_attack(nn.Identity(), torch.rand(2, 2), torch.zeros(2, dtype=torch.long), 0.1, loss="hinge")
    with pytest.raises(MaarError):
        pgd_maximize(nn.Identity(), torch.zeros(2, 2), torch.ones(2, 3), lambda out: out.sum(1), steps=1)
