"""Projected gradient ascent (PGD, Madry et al. 2018) inside an input box.

``pgd_maximize`` is the general tool (any per-example objective of the model's output, any box);
``pgd_attack`` is the usual untargeted attack in the L∞ ε-ball clipped to [0, 1]. Both take gradients
with respect to the input only, so parameter gradients are never touched, and neither changes the
model's train/eval mode: a caller that attacks a model with BatchNorm decides which mode it wants.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from maar_plugin.bounds.box import linf_ball_box
from maar_plugin.errors import MaarError


def pgd_maximize(
    model: nn.Module,
    lower: Tensor,
    upper: Tensor,
    objective: Callable[[Tensor], Tensor],
    steps: int,
    restarts: int = 1,
    step_size: float | Tensor | None = None,
    start: Tensor | None = None,
    step_decay: float = 1.0,
    stop_above: float | None = None,
) -> Tensor:
    """Maximise ``objective(model(x))`` (one value per example, shape [B]) over ``lower <= x <= upper``.

    Runs ``restarts`` sign-gradient ascents of ``steps`` steps each; the first starts at ``start`` when
    given, the others at uniform random points of the box. Every iterate is scored and the best point
    per example over all runs is returned (detached). ``step_size`` is absolute (a number, or a tensor per
    coordinate); by default each coordinate moves 2.5 · half-width / steps per step, so a run can cross the
    box (Madry et al. 2018);
    ``step_decay`` multiplies the step after every step of a run; with ``stop_above`` the search ends as
    soon as some example's value exceeds it.
    """
    if lower.shape != upper.shape:
        raise MaarError(f"PGD box bounds differ in shape: {tuple(lower.shape)} vs {tuple(upper.shape)}")
    if steps < 0 or restarts < 1:
        raise MaarError(f"PGD needs steps >= 0 and restarts >= 1, got steps={steps}, restarts={restarts}")
    lower, upper = lower.detach(), upper.detach()
    step = 2.5 * (upper - lower) / 2 / max(steps, 1) if step_size is None else step_size
    best_x = lower.clone() if start is None else start.detach().clamp(lower, upper)
    best_value = torch.full((lower.shape[0],), -torch.inf, device=lower.device, dtype=lower.dtype)
    with torch.enable_grad():
        for run in range(restarts):
            if run == 0 and start is not None:
                x = start.detach().clamp(lower, upper)
            else:
                x = lower + torch.rand_like(lower) * (upper - lower)
            step_now = step
            for step_index in range(steps + 1):
                x.requires_grad_(True)
                value = objective(model(x))
                _keep_best(best_x, best_value, x.detach(), value.detach())
                if stop_above is not None and bool((best_value > stop_above).any()):
                    return best_x
                if step_index == steps:
                    break
                (gradient,) = torch.autograd.grad(value.sum(), x)
                x = torch.max(torch.min(x.detach() + step_now * gradient.sign(), upper), lower)
                step_now = step_now * step_decay
    return best_x


def _keep_best(best_x: Tensor, best_value: Tensor, x: Tensor, value: Tensor) -> None:
    """Overwrite, in place, the examples where ``value`` beats ``best_value``."""
    improved = value > best_value
    best_value[improved] = value[improved]
    best_x[improved] = x[improved]


def margin_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """max_{j≠y} z_j − z_y per example: positive exactly where the example is misclassified."""
    true_logit = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.scatter(1, labels[:, None], -torch.inf)
    return others.max(dim=1).values - true_logit


def cross_entropy_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy per example."""
    return nn.functional.cross_entropy(logits, labels, reduction="none")


ATTACK_LOSSES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "margin": margin_loss,
    "ce": cross_entropy_loss,
}


def pgd_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 20,
    restarts: int = 1,
    loss: str = "margin",
    step_size: float | None = None,
) -> Tensor:
    """Untargeted L∞ PGD: the point of {x' : ‖x' − x‖∞ ≤ eps} ∩ [0,1] that maximises ``loss``.

    ``loss`` is "margin" (best for finding counterexamples: the point kept per example is
    misclassified whenever any iterate was) or "ce" (Madry et al. 2018 training). Random starts;
    default step 2.5 · eps / steps.
    """
    if loss not in ATTACK_LOSSES:
        raise MaarError(f"unknown attack loss {loss!r}; choose one of {sorted(ATTACK_LOSSES)}")
    loss_fn = ATTACK_LOSSES[loss]
    lower, upper = linf_ball_box(x, eps)
    if step_size is None:
        step_size = 2.5 * eps / max(steps, 1)
    return pgd_maximize(model, lower, upper, lambda logits: loss_fn(logits, y), steps, restarts, step_size)
