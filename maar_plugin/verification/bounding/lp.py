"""Linear programs solved by HiGHS, with a lower bound of the minimum that is sound whatever the solver's
tolerances (branch and bound decides fully split domains with one: :mod:`~..search.pattern_lp`).

The bound returned is not HiGHS's objective value but the Lagrangian value of its row duals,
evaluated in float64 with finite column bounds (Neumaier & Shcherbina 2004, "Safe bounds in linear and
mixed-integer linear programming"). It is a valid lower bound for *any* multipliers, so an inaccurate
dual makes it loose, never wrong.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import highspy
import numpy as np
from scipy import sparse

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


def silent_highs() -> highspy.Highs:
    """A HiGHS instance that prints nothing; its C++ constructor writes a banner straight to file
    descriptor 1 (once per process), which would land in the middle of our tables."""
    sys.stdout.flush()
    saved_stdout = os.dup(1)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        highs = highspy.Highs()
    finally:
        os.dup2(saved_stdout, 1)
        os.close(saved_stdout)
        os.close(null)
    highs.setOptionValue("output_flag", False)
    return highs


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
