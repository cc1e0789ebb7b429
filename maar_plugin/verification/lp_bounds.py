"""The LP relaxation of a disjunct, with a lower bound that is sound whatever the LP solver's tolerances.

The ReLU network is relaxed to a linear program: a stable ReLU is the identity or zero, an unstable one
with input bounds [l, u] becomes the "triangle" ``a >= 0, a >= z, a <= u (z - l) / (u - l)`` (Ehlers
2017; the LP relaxation of the MILP in ``milp``, δ projected out). Minimising ``t`` subject to
``C_r y - d_r <= t`` over it bounds the disjunct ``C y <= d`` from below; its minimiser is a good
start for a counterexample search, since the relaxation is exact wherever no ReLU is split.

The bound returned is not HiGHS's objective value but the Lagrangian value of its row duals,
evaluated in float64 with finite column bounds (Neumaier & Shcherbina 2004, "Safe bounds in linear and
mixed-integer linear programming"). It is a valid lower bound for *any* multipliers, so an inaccurate
dual makes it loose, never wrong.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from maar_plugin.verification.bounds import Bounds
from maar_plugin.verification.milp import silent_highs
from maar_plugin.verification.network import ReluNetwork

ROUNDING_PAD = 1e-9


@dataclass(frozen=True)
class LinearRelaxation:
    """``row_lower <= A v <= row_upper`` and ``column_lower <= v <= column_upper`` (all finite); minimise ``cost·v``.

    The first ``num_inputs`` columns are the network input.
    """

    matrix: sparse.csr_matrix
    row_lower: np.ndarray
    row_upper: np.ndarray
    column_lower: np.ndarray
    column_upper: np.ndarray
    cost: np.ndarray
    num_inputs: int


def disjunct_relaxation(network: ReluNetwork, bounds: Bounds, lower: np.ndarray, upper: np.ndarray,
                        coefficients: np.ndarray, offsets: np.ndarray) -> LinearRelaxation:
    """min t s.t. ``coefficients_r @ f(x) - offsets_r <= t``, x in the box, f relaxed with the given ReLU input bounds.

    ``t`` gets finite bounds from interval arithmetic on the last layer (needed by :func:`safe_lower_bound`);
    they hold at every feasible point, so they do not change the minimum.
    """
    column_lower, column_upper = [lower.astype(np.float64)], [upper.astype(np.float64)]
    blocks, row_lower, row_upper = [], [], []
    previous = np.arange(lower.size)  # column of each neuron of the previous layer, -1 where it is constant 0
    width = lower.size
    for layer, (z_low, z_up) in zip(network.layers[:-1], bounds):
        active, unstable = z_low >= 0, (z_low < 0) & (z_up > 0)
        kept = np.flatnonzero(active | unstable)
        columns = np.full(z_low.size, -1)
        columns[kept] = width + np.arange(kept.size)
        width += kept.size
        column_lower.append(np.where(active[kept], z_low[kept], 0.0))
        column_upper.append(z_up[kept].astype(np.float64))
        identity = sparse.csr_matrix((np.ones(kept.size), (np.arange(kept.size), columns[kept])),
                                     shape=(kept.size, width))
        affine = _embedded(layer.weight[kept], previous, width)
        bias = layer.bias[kept]
        blocks.append(identity - affine)                                 # a - W a_prev = b (active), >= b (unstable)
        row_lower.append(bias)
        row_upper.append(np.where(active[kept], bias, np.inf))
        split = np.flatnonzero(unstable[kept])
        low, up = z_low[kept][split], z_up[kept][split]
        slope = up / (up - low)
        blocks.append(identity[split] - sparse.diags(slope) @ affine[split])   # a <= u (z - l) / (u - l)
        row_lower.append(np.full(split.size, -np.inf))
        row_upper.append(slope * (bias[split] - low))
        previous = columns

    last = network.layers[-1]
    output_weight, output_bias = coefficients @ last.weight, coefficients @ last.bias - offsets
    t_low, t_up = _margin_range(network, bounds, lower, upper, coefficients, offsets)
    column_lower.append(np.array([t_low]))
    column_upper.append(np.array([t_up]))
    width += 1
    t_column = sparse.csr_matrix(-np.ones((coefficients.shape[0], 1)))
    blocks.append(sparse.hstack([_embedded(output_weight, previous, width - 1), t_column]))
    row_lower.append(np.full(coefficients.shape[0], -np.inf))
    row_upper.append(-output_bias)

    matrix = sparse.vstack([_widened(block, width) for block in blocks]).tocsr()
    cost = np.zeros(width)
    cost[-1] = 1.0
    return LinearRelaxation(matrix, np.concatenate(row_lower).astype(np.float64),
                            np.concatenate(row_upper).astype(np.float64), np.concatenate(column_lower),
                            np.concatenate(column_upper), cost, lower.size)


def _embedded(weight: np.ndarray, previous: np.ndarray, width: int) -> sparse.csr_matrix:
    """``weight`` (columns = previous layer's neurons) as rows over the LP columns; constant-zero neurons dropped."""
    present = previous >= 0
    dense = sparse.csr_matrix(weight[:, present])
    return sparse.csr_matrix((dense.data, previous[present][dense.indices], dense.indptr),
                             shape=(weight.shape[0], width))


def _widened(block: sparse.spmatrix, width: int) -> sparse.csr_matrix:
    """``block`` with zero columns appended up to ``width`` (blocks of earlier layers are narrower)."""
    block = sparse.csr_matrix(block)
    return sparse.csr_matrix((block.data, block.indices, block.indptr), shape=(block.shape[0], width))


def _margin_range(network: ReluNetwork, bounds: Bounds, lower: np.ndarray, upper: np.ndarray,
                  coefficients: np.ndarray, offsets: np.ndarray) -> tuple[float, float]:
    """Interval bounds of ``max_r (coefficients_r @ f(x) - offsets_r)``, widened for float64 rounding."""
    if bounds:
        low, up = np.maximum(bounds[-1][0], 0.0), np.maximum(bounds[-1][1], 0.0)
    else:
        low, up = lower.astype(np.float64), upper.astype(np.float64)
    weight = coefficients @ network.layers[-1].weight
    bias = coefficients @ network.layers[-1].bias - offsets
    margin_low = np.maximum(weight, 0) @ low + np.minimum(weight, 0) @ up + bias
    margin_up = np.maximum(weight, 0) @ up + np.minimum(weight, 0) @ low + bias
    t_low, t_up = float(margin_low.max()), float(margin_up.max())
    return t_low - 1e-6 * (1 + abs(t_low)), t_up + 1e-6 * (1 + abs(t_up))


def safe_lower_bound(relaxation: LinearRelaxation, row_dual: np.ndarray) -> float:
    """A rigorous lower bound of the relaxation's minimum from any row multipliers ``row_dual``.

    ``cost·v = y·(A v) + (cost - Aᵀy)·v``; each term is bounded below with the finite row side that
    matches the sign of ``y`` (multipliers on an infinite side are dropped) and the column bounds,
    less a pad far above float64 rounding error.
    """
    y = np.where((row_dual > 0) & np.isfinite(relaxation.row_lower), row_dual, 0.0)
    y = np.where((row_dual < 0) & np.isfinite(relaxation.row_upper), row_dual, y)
    reduced = relaxation.cost - relaxation.matrix.T @ y
    row_terms = y * np.where(y > 0, np.nan_to_num(relaxation.row_lower), np.nan_to_num(relaxation.row_upper))
    column_terms = np.where(reduced > 0, reduced * relaxation.column_lower, reduced * relaxation.column_upper)
    total = float(row_terms.sum() + column_terms.sum())
    # float64 rounding: in the sums, and in ``reduced``, whose error scales with |A|ᵀ|y|, not with |reduced|
    widest = np.maximum(np.abs(relaxation.column_lower), np.abs(relaxation.column_upper))
    products = abs(relaxation.matrix).T @ np.abs(y)
    magnitude = float(np.abs(row_terms).sum() + np.abs(column_terms).sum() + products @ widest)
    return total - ROUNDING_PAD * (1.0 + magnitude)


def solve_relaxation(relaxation: LinearRelaxation, time_limit: float) -> tuple[float, np.ndarray | None]:
    """(sound lower bound of the minimum, the LP's input point or None); ``-inf`` when HiGHS gives no dual."""
    if time_limit <= 0:
        return -np.inf, None
    highs = silent_highs()
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("time_limit", float(time_limit))
    matrix = relaxation.matrix
    size = relaxation.cost.size
    highs.addVars(size, relaxation.column_lower, relaxation.column_upper)
    highs.changeColsCost(size, np.arange(size, dtype=np.int32), relaxation.cost)
    highs.addRows(matrix.shape[0], relaxation.row_lower, relaxation.row_upper, matrix.nnz,
                  matrix.indptr[:-1].astype(np.int32), matrix.indices.astype(np.int32), matrix.data.astype(np.float64))
    highs.run()
    info = highs.getInfo()
    solution = highs.getSolution()
    point = np.array(solution.col_value[:relaxation.num_inputs]) if info.primal_solution_status == 2 else None
    if info.dual_solution_status != 2:  # kSolutionStatusFeasible
        return -np.inf, point
    return safe_lower_bound(relaxation, np.asarray(solution.row_dual)), point
