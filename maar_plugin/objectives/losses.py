"""Loss arithmetic as pure tensor functions: robust cross-entropy, MAAR's KL bound and weights, schedules."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

WEIGHTINGS = ("hard", "soft")


def linear_ramp(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0 to ``end`` at progress 1, linearly (κ, β schedules of CROWN-IBP)."""
    return start + (end - start) * min(max(progress, 0.0), 1.0)


def robust_ce_from_margins(margin_lower: Tensor) -> Tensor:
    """Per-example cross-entropy of the worst-case logits [0, −lb_j] with the true class at 0.

    Margin lower bounds lb_j ≤ z_y − z_j [B, K-1] give the logits z̃ = −lb (z̃_y = 0) that upper-bound
    the cross-entropy over the ε-ball (Wong & Kolter 2018; Gowal et al. 2018):
    CE = log(1 + Σ_j exp(−lb_j)).
    """
    worst_logits = torch.cat([margin_lower.new_zeros(margin_lower.shape[0], 1), -margin_lower], dim=1)
    return torch.logsumexp(worst_logits, dim=1)


def kl_upper_bound(clean_logits: Tensor, pairwise_upper: Tensor) -> Tensor:
    """R̄(x) ≥ max over the ball of KL(p(x) ‖ p(x')), per example [B].

    With p = softmax(z) and −log p_k(x') = logsumexp_j (z_j(x') − z_k(x')):
    R̄ = Σ_k p_k log p_k + Σ_k p_k · logsumexp_j d̄_jk, where ``pairwise_upper`` [B, K, K] holds upper
    bounds d̄_jk of z_j − z_k over the ball (zero diagonal). R̄ ≥ 0 whenever the ball contains x, and
    R̄ = 0 at ε = 0. Gradients flow through p(x) as through MART's KL (Wang et al. 2020).
    """
    log_p = F.log_softmax(clean_logits, dim=1)
    p = log_p.exp()
    worst_neg_log_p = torch.logsumexp(pairwise_upper, dim=1)  # [B, K]: bound of −log p_k(x') per k
    return (p * (log_p + worst_neg_log_p)).sum(dim=1)


def misclassification_weights(logits: Tensor, labels: Tensor, mode: str) -> Tensor:
    """MAAR's per-example weight [B]: "hard" = 1 where argmax z ≠ y else 0; "soft" = 1 − p_y (MART).

    The soft weight keeps its gradient, as MART's does (Wang et al. 2020); the hard one has none.
    """
    if mode == "hard":
        return (logits.argmax(dim=1) != labels).to(logits.dtype)
    if mode == "soft":
        return 1.0 - F.softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
    raise ValueError(f"unknown weighting {mode!r}; choose one of {WEIGHTINGS}")


def logit_margins(logits: Tensor, labels: Tensor) -> Tensor:
    """z_y − z_j for every j ≠ y, in increasing j (the order of ``margin_spec``): [B, K-1]."""
    num_classes = logits.shape[1]
    keep = torch.arange(num_classes, device=logits.device)[None, :] != labels[:, None]
    margins = logits.gather(1, labels[:, None]) - logits
    return margins[keep].view(len(labels), num_classes - 1)
