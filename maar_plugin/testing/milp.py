"""The exact reference: a mixed-integer program over a dense ReLU network, solved by HiGHS (highspy).

Not a stage of the verifier: tests (and benchmarks) judge the verifier's verdicts against it on small
networks.

For one disjunct ``C y <= d`` we minimise ``t`` subject to ``C y - d <= t`` over the input box, with the
network encoded exactly (Tjeng et al. 2019, "Evaluating robustness of neural networks with mixed
integer programming", eq. 5): a ReLU whose input bounds [l, u] prove it active is the identity,
inactive is 0, and only unstable ones get a binary δ with ``a >= z, a <= z - l(1 - δ), a <= u δ, a >= 0``.
``t`` is capped at ``refute_tolerance``, so an infeasible program proves every row combination stays
above that margin (the disjunct is empty); a solution with ``t <= 0`` is a candidate counterexample
that the caller re-checks on the original ONNX model. Everything is float64.

With every δ relaxed to [0, 1] the same program is the triangle ("Planet") LP relaxation, whose minimum is
what an optimal α,β-CROWN bound reaches over the same intermediate bounds (Wang et al. 2021):
:func:`triangle_lp_minimum`. Bounds with a neuron's upper bound at 0 and its lower bound below (a branch
and bound domain's inactive split) keep ``z <= 0`` as a row.
"""
from __future__ import annotations

from dataclasses import dataclass

import highspy
import numpy as np

from maar_plugin.testing.dense import Bounds, ReluNetwork, dense_network, interval_preactivation_bounds
from maar_plugin.verification.bounding.lp import silent_highs
from maar_plugin.verification.network.layers import LayerGraph
from maar_plugin.vnnlib.property import VnnlibProperty

REFUTE_TOLERANCE = 1e-6


@dataclass(frozen=True)
class MilpOutcome:
    """``refuted`` (no x in the box reaches t <= tolerance), ``candidate`` (x with t = objective found),
    ``timeout``, ``unknown`` (solver gave up for another reason, described in ``message``), or
    ``undecided`` (set by the caller: a candidate that does not reproduce in float32)."""

    status: str
    x: np.ndarray | None = None
    objective: float | None = None
    message: str = ""


class _Rows:
    """Sparse constraint rows collected as CSR arrays for one ``addRows`` call."""

    def __init__(self) -> None:
        self.lower: list[float] = []
        self.upper: list[float] = []
        self.starts: list[int] = []
        self.indices: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.count = 0

    def add(self, columns: np.ndarray, coefficients: np.ndarray, low: float, high: float) -> None:
        keep = coefficients != 0
        self.starts.append(self.count)
        self.indices.append(columns[keep].astype(np.int32))
        self.values.append(coefficients[keep].astype(np.float64))
        self.count += int(keep.sum())
        self.lower.append(low)
        self.upper.append(high)


def solve_disjunct(network: ReluNetwork, bounds: Bounds, lower: np.ndarray, upper: np.ndarray,
                   coefficients: np.ndarray, offsets: np.ndarray, time_limit: float,
                   required_margin: float = 0.0, refute_tolerance: float = REFUTE_TOLERANCE) -> MilpOutcome:
    """Search x in [lower, upper] with ``coefficients @ f(x) <= offsets - required_margin``.

    ``bounds`` are sound pre-activation bounds per hidden layer. Stops at the first solution with
    ``t <= -required_margin``; infeasibility of ``t <= refute_tolerance`` refutes the disjunct.
    """
    if time_limit <= 0:
        return MilpOutcome("timeout")
    highs = silent_highs()
    highs.setOptionValue("time_limit", float(time_limit))
    highs.setOptionValue("threads", 1)
    highs.setOptionValue("objective_target", -float(required_margin))
    t = _encode(highs, network, bounds, lower, upper, coefficients, offsets, refute_tolerance, integral=True)
    highs.run()
    return _outcome(highs, t, network.num_inputs)


def triangle_lp_minimum(network: ReluNetwork, bounds: Bounds, lower: np.ndarray, upper: np.ndarray,
                        coefficients: np.ndarray, offsets: np.ndarray, time_limit: float = 600.0) -> float:
    """The minimum of ``max_r (coefficients_r @ f(x) − offsets_r)`` over the triangle relaxation of the network
    on the box, with these intermediate ``bounds`` (HiGHS's objective value: no safety margin, for
    comparisons); +inf where the relaxation is empty, nan where HiGHS stops without an optimum."""
    highs = silent_highs()
    highs.setOptionValue("time_limit", float(time_limit))
    highs.setOptionValue("threads", 1)
    _encode(highs, network, bounds, lower, upper, coefficients, offsets, highspy.kHighsInf, integral=False)
    highs.run()
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return float("inf")
    if status != highspy.HighsModelStatus.kOptimal:
        return float("nan")
    return float(highs.getInfo().objective_function_value)


def _encode(highs: highspy.Highs, network: ReluNetwork, bounds: Bounds, lower: np.ndarray, upper: np.ndarray,
            coefficients: np.ndarray, offsets: np.ndarray, t_cap: float, integral: bool) -> int:
    """Add the program (see the module docstring) to ``highs``, objective ``t`` (capped at ``t_cap``); δ binary
    where ``integral``, else in [0, 1]. Returns t's column."""
    infinity = highspy.kHighsInf

    column_lower: list[np.ndarray] = [lower.astype(np.float64)]
    column_upper: list[np.ndarray] = [upper.astype(np.float64)]
    integer_columns: list[int] = []
    rows = _Rows()
    previous = np.arange(network.num_inputs)
    next_column = network.num_inputs
    for layer, (z_low, z_up) in zip(network.layers[:-1], bounds):
        size = layer.weight.shape[0]
        active_columns = np.arange(next_column, next_column + size)
        next_column += size
        unstable = np.flatnonzero((z_low < 0) & (z_up > 0))
        deltas = np.arange(next_column, next_column + unstable.size)
        next_column += unstable.size
        column_lower += [np.zeros(size), np.zeros(unstable.size)]
        column_upper += [np.where(z_low >= 0, z_up, np.where(z_up <= 0, 0.0, z_up)), np.ones(unstable.size)]
        integer_columns += deltas.tolist()
        delta_of = dict(zip(unstable.tolist(), deltas.tolist()))
        for neuron in range(size):
            a = active_columns[neuron]
            weights = layer.weight[neuron]
            bias = float(layer.bias[neuron])
            columns = np.concatenate([[a], previous])
            if z_up[neuron] <= 0:
                if z_up[neuron] == 0 and z_low[neuron] < 0:
                    rows.add(previous, weights, -infinity, -bias)                            # z <= 0
                continue
            if z_low[neuron] >= 0:
                rows.add(columns, np.concatenate([[1.0], -weights]), bias, bias)
                continue
            low, up, delta = float(z_low[neuron]), float(z_up[neuron]), delta_of[neuron]
            rows.add(columns, np.concatenate([[1.0], -weights]), bias, infinity)            # a >= z
            rows.add(np.concatenate([columns, [delta]]), np.concatenate([[1.0], -weights, [-low]]),
                     -infinity, bias - low)                                                  # a <= z - l(1-δ)
            rows.add(np.array([a, delta]), np.array([1.0, -up]), -infinity, 0.0)            # a <= u δ
        previous = active_columns

    t = next_column
    column_lower.append(np.array([-infinity]))
    column_upper.append(np.array([t_cap]))
    last = network.layers[-1]
    output_weight, output_bias = coefficients @ last.weight, coefficients @ last.bias
    for row in range(coefficients.shape[0]):
        rows.add(np.concatenate([previous, [t]]), np.concatenate([output_weight[row], [-1.0]]),
                 -infinity, float(offsets[row] - output_bias[row]))

    all_lower, all_upper = np.concatenate(column_lower), np.concatenate(column_upper)
    costs = np.zeros(all_lower.size)
    costs[t] = 1.0
    highs.addVars(all_lower.size, all_lower, all_upper)
    highs.changeColsCost(all_lower.size, np.arange(all_lower.size, dtype=np.int32), costs)
    if integer_columns and integral:
        highs.changeColsIntegrality(len(integer_columns), np.array(integer_columns, dtype=np.int32),
                                    np.full(len(integer_columns), highspy.HighsVarType.kInteger))
    highs.addRows(len(rows.lower), np.array(rows.lower), np.array(rows.upper), rows.count,
                  np.array(rows.starts, dtype=np.int32), np.concatenate(rows.indices),
                  np.concatenate(rows.values))
    return t


def _outcome(highs: highspy.Highs, t_column: int, num_inputs: int) -> MilpOutcome:
    status = highs.getModelStatus()
    if status == highspy.HighsModelStatus.kInfeasible:
        return MilpOutcome("refuted")
    solution = highs.getSolution()
    has_solution = highs.getInfo().primal_solution_status == 2  # kSolutionStatusFeasible
    if has_solution:
        values = np.array(solution.col_value)
        return MilpOutcome("candidate", values[:num_inputs], float(values[t_column]))
    if status == highspy.HighsModelStatus.kTimeLimit:
        return MilpOutcome("timeout")
    return MilpOutcome("unknown", message=f"HiGHS ended with {highs.modelStatusToString(status)}")


def milp_verdict(network: ReluNetwork, lower: np.ndarray, upper: np.ndarray, C: np.ndarray, d: np.ndarray,
                 time_limit: float = 30.0, margin: float = 1e-4) -> str:
    """``sat`` if some disjunct ``C[k] y <= d[k]`` is reached with margin ``margin`` inside the box, ``unsat``
    if every disjunct is refuted, else ``ambiguous`` (a violation within the margin, or a solver limit)."""
    bounds = interval_preactivation_bounds(network, lower, upper)
    verdict = "unsat"
    for k in range(len(C)):
        outcome = solve_disjunct(network, bounds, lower, upper, C[k], d[k], time_limit)
        if outcome.status == "candidate" and outcome.objective is not None and outcome.objective < -margin:
            return "sat"
        if outcome.status != "refuted":
            verdict = "ambiguous"
    return verdict


def exact_verdict(graph: LayerGraph, cases: list[VnnlibProperty], time_limit: float = 30.0,
                  margin: float = 1e-4) -> str:
    """The MILP verdict of a property (its input boxes ``cases``) on a chain-shaped LayerGraph: ``sat`` if any
    box reaches any disjunct with ``margin``, ``unsat`` if none does, else ``ambiguous``."""
    network = dense_network(graph)
    verdicts = []
    for case in cases:
        rows = max(len(conjunction.bounds) for conjunction in case.unsafe)
        padded = [(np.concatenate([c.coefficients, np.repeat(c.coefficients[:1], rows - len(c.bounds), axis=0)]),
                   np.concatenate([c.bounds, np.repeat(c.bounds[:1], rows - len(c.bounds))])) for c in case.unsafe]
        verdicts.append(milp_verdict(network, case.input_lower, case.input_upper, np.stack([C for C, _ in padded]),
                                     np.stack([d for _, d in padded]), time_limit, margin))
    if "sat" in verdicts:
        return "sat"
    return "unsat" if all(verdict == "unsat" for verdict in verdicts) else "ambiguous"
