"""Specification matrices: the linear functions ``spec @ logits`` whose bounds certified training needs.

A spec has shape [B, S, K] (S rows over K logits); bound methods fold it into the last linear layer.
The pairwise spec (rows z_j − z_k for all j ≠ k) holds every margin row e_y − e_j and, negated, every
upper bound of a logit difference, so one lower-bound pass (what CROWN-IBP training computes) over it
serves both the certified loss and MAAR's KL bound; it is the same for all examples, so it can be
passed with batch dimension 1 and broadcast. ``margins_from_pairwise`` and ``pairwise_upper_from_lower``
split the result back.
"""
from __future__ import annotations

import torch
from torch import Tensor


def margin_spec(labels: Tensor, num_classes: int) -> Tensor:
    """Rows e_y − e_j for every j ≠ y, in increasing j: [B, K-1, K]. Lower bounds > 0 on all rows = verified."""
    identity = torch.eye(num_classes, device=labels.device)
    rows = identity[labels][:, None, :] - identity[None, :, :]  # [B, K, K]: row j is e_y − e_j
    keep = torch.arange(num_classes, device=labels.device)[None, :] != labels[:, None]
    return rows[keep].view(len(labels), num_classes - 1, num_classes)


def pairwise_spec(num_classes: int, batch_size: int = 1, device: torch.device | str | None = None) -> Tensor:
    """Rows e_j − e_k for every ordered pair j ≠ k, row-major in (j, k): [B, K(K-1), K]."""
    identity = torch.eye(num_classes, device=device)
    rows = (identity[:, None, :] - identity[None, :, :]).view(num_classes * num_classes, num_classes)
    rows = rows[_off_diagonal(num_classes, device).view(-1)]
    return rows.expand(batch_size, -1, -1)


def pairwise_matrix(row_values: Tensor, num_classes: int) -> Tensor:
    """Values of the ``pairwise_spec`` rows [B, K(K-1)] as a [B, K, K] matrix (j, k) with zero diagonal."""
    matrix = row_values.new_zeros(row_values.shape[0], num_classes * num_classes)
    matrix = matrix.masked_scatter(_off_diagonal(num_classes, row_values.device).view(1, -1), row_values)
    return matrix.view(-1, num_classes, num_classes)


def margins_from_pairwise(pairwise_lower: Tensor, labels: Tensor) -> Tensor:
    """The margin rows' lower bounds [B, K-1] (order of ``margin_spec``) from a pairwise matrix [B, K, K]."""
    num_classes = pairwise_lower.shape[1]
    rows = pairwise_lower[torch.arange(len(labels), device=labels.device), labels]  # [B, K]: lb(z_y − z_j)
    keep = torch.arange(num_classes, device=labels.device)[None, :] != labels[:, None]
    return rows[keep].view(len(labels), num_classes - 1)


def pairwise_upper_from_lower(pairwise_lower: Tensor) -> Tensor:
    """Upper bounds of z_j − z_k [B, K, K] from lower bounds of z_k − z_j: ub(c·z) = −lb(−c·z)."""
    return -pairwise_lower.transpose(1, 2)


def _off_diagonal(num_classes: int, device: torch.device | str | None) -> Tensor:
    return ~torch.eye(num_classes, dtype=torch.bool, device=device)
