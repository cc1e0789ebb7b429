"""``crown_verified``: per image, CROWN's verdict over the ε-ball; on a linear network CROWN is exact, so the
verdicts must be those of the exact worst-case margins, computed here by hand."""
from __future__ import annotations

import torch
from torch import nn

from maar_plugin.training.evaluate import crown_verified, evaluate_robustness


def exact_linear_verdicts(layer: nn.Linear, images: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """Whether min over the ε-ball ∩ [0,1] of z_y − z_j is positive for every j ≠ y (a linear z = Wx + b)."""
    x = images.flatten(1)
    lower, upper = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    verdicts = []
    for point_lower, point_upper, label in zip(lower, upper, labels):
        rows = layer.weight[label] - layer.weight  # [K, n]: coefficients of z_y − z_j
        worst = torch.minimum(rows * point_lower, rows * point_upper).sum(1) + layer.bias[label] - layer.bias
        worst[label] = 1.0
        verdicts.append(bool((worst > 0).all()))
    return torch.tensor(verdicts)


def test_crown_verified_is_exact_on_a_linear_network_and_agrees_with_the_count():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3)).eval()
    images = torch.rand(40, 1, 4, 4)
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[:5] = (labels[:5] + 1) % 3  # five misclassified images: never verified
    eps = 0.03
    verified = crown_verified(model, images, labels, eps, 3, batch_size=7)
    expected = exact_linear_verdicts(model[1], images, labels, eps)
    assert verified.dtype == torch.bool and verified.tolist() == expected.tolist()
    assert not verified[:5].any() and 0 < int(verified.sum()) < 35  # both verdicts occur
    accuracies = evaluate_robustness(model, images, labels, eps, 3, pgd_steps=2)
    assert accuracies["crown_verified"] == 100.0 * int(verified.sum()) / len(images)
