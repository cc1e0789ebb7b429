"""Robustness metrics of a classifier on a labelled set: clean, PGD, IBP- and CROWN-verified accuracy."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from maar_plugin.attacks import pgd_attack
from maar_plugin.bounds.box import linf_ball_box
from maar_plugin.bounds.ibp import interval_bounds
from maar_plugin.bounds.specs import margin_spec


def verified_by_margins(margin_lower: Tensor) -> Tensor:
    """An example is verified when every margin row z_y - z_j has a positive lower bound."""
    return (margin_lower > 0).all(dim=1)


@torch.no_grad()
def _clean_correct(model: nn.Module, images: Tensor, labels: Tensor) -> Tensor:
    return model(images).argmax(dim=1) == labels


def evaluate_robustness(
    model: nn.Sequential,
    images: Tensor,
    labels: Tensor,
    eps: float,
    num_classes: int,
    batch_size: int = 256,
    pgd_steps: int = 20,
    pgd_restarts: int = 1,
    crown_count: int | None = None,
    crown_batch_size: int = 32,
) -> dict[str, float]:
    """Accuracies in percent at radius ``eps`` (the model is put in eval mode and left there).

    PGD accuracy counts examples that are correct and survive the attack; verified accuracies count
    examples whose margins are all proved positive over the ε-ball (verified implies correct).
    CROWN (much slower than IBP) bounds only the first ``crown_count`` examples (default: all; 0: none).
    """
    model.eval()
    counts = {"clean": 0, "pgd": 0, "ibp_verified": 0}
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        correct = _clean_correct(model, x, y)
        lower, upper = linf_ball_box(x, eps)
        with torch.enable_grad():
            adversarial = pgd_attack(model, x, y, eps, steps=pgd_steps, restarts=pgd_restarts)
        robust = correct & _clean_correct(model, adversarial, y)
        with torch.no_grad():
            margin_lower, _ = interval_bounds(model, lower, upper, spec=margin_spec(y, num_classes))
        counts["clean"] += int(correct.sum())
        counts["pgd"] += int(robust.sum())
        counts["ibp_verified"] += int((verified_by_margins(margin_lower) & correct).sum())
    accuracies = {name: 100.0 * count / len(images) for name, count in counts.items()}
    crown_count = len(images) if crown_count is None else min(crown_count, len(images))
    if crown_count > 0:
        verified = crown_verified(model, images[:crown_count], labels[:crown_count], eps, num_classes, crown_batch_size)
        accuracies["crown_verified"] = 100.0 * int(verified.sum()) / crown_count
    return accuracies


def crown_verified(
    model: nn.Module, images: Tensor, labels: Tensor, eps: float, num_classes: int, batch_size: int = 32
) -> Tensor:
    """Per image, whether CROWN (auto_LiRPA) proves every margin positive over the ε-ball and the image is
    classified correctly: a boolean tensor [N], for paired comparisons of two networks image by image."""
    from maar_plugin.bounds.lirpa import LirpaBounds  # auto_LiRPA only where CROWN-verified accuracy is asked for

    model.eval()
    bounder = LirpaBounds(model, images[:1])
    verified = []
    for start in range(0, len(images), batch_size):
        x, y = images[start : start + batch_size], labels[start : start + batch_size]
        lower, upper = linf_ball_box(x, eps)
        with torch.no_grad():
            margin_lower, _ = bounder.bounds(lower, upper, margin_spec(y, num_classes), "CROWN")
        verified.append(verified_by_margins(margin_lower) & _clean_correct(model, x, y))
    return torch.cat(verified)
