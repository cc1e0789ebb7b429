"""Soundness of `maar verify` against exact references on tiny random ReLU networks.

Every ``unsat`` is checked against an exact minimum computed independently (a MILP with *all* neurons
binary and naive interval big-M via scipy, or exhaustive activation-pattern LPs for the tiniest nets);
every ``sat`` counterexample is parsed from the result text and re-run through onnxruntime.
"""
from __future__ import annotations

import itertools
import time

import numpy as np
import onnxruntime
import pytest
import torch
from scipy import sparse
from scipy.optimize import Bounds as ScipyBounds
from scipy.optimize import LinearConstraint, linprog, milp
from torch import nn

from helpers import FAST, check_counterexample
from maar_plugin.testing.dense import AffineLayer, ReluNetwork, dense_network, interval_preactivation_bounds
from maar_plugin.testing.milp import solve_disjunct
from maar_plugin.testing.problems import export_onnx as export
from maar_plugin.testing.problems import mlp, write_vnnlib
from maar_plugin.verification import ModelCache, VerifyOptions, load_onnx_graph, verify_instance
from maar_plugin.verification.bounding.lirpa_stages import LirpaBoundStages
from maar_plugin.verification.bounding.lp import LinearRelaxation, safe_lower_bound, solve_relaxation
from maar_plugin.verification.run.cascade import Cascade
from maar_plugin.vnnlib.reader import read_vnnlib_cases

CLEAR = 1e-4  # reference margins beyond this must be decided exactly (above the 1e-5·(1+|d|) tolerance)


# ---------------------------------------------------------------- fixtures: networks, properties

def random_network(seed: int, inputs: int, hidden: tuple[int, ...], outputs: int) -> nn.Sequential:
    return mlp(seed, (inputs, *hidden, outputs))


# ---------------------------------------------------------------- exact references (independent code)

def network_matrices(model: nn.Sequential) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(m.weight.detach().double().numpy(), m.bias.detach().double().numpy())
            for m in model if isinstance(m, nn.Linear)]


def reference_min_all_binary(model: nn.Sequential, lower: np.ndarray, upper: np.ndarray,
                             C: np.ndarray, d: np.ndarray) -> float:
    """min over the box of max_r (C_r y - d_r): every ReLU binary, big-M from plain interval bounds."""
    layers = network_matrices(model)
    n = len(lower)
    hidden = [w.shape[0] for w, _ in layers[:-1]]
    total = n + 2 * sum(hidden) + 1
    col_lower, col_upper = [lower], [upper]
    integrality = [np.zeros(n)]
    rows, row_lower, row_upper = [], [], []

    def constrain(row: np.ndarray, at_least: float, at_most: float) -> None:  # at_least <= row . x <= at_most
        rows.append(row)
        row_lower.append(at_least)
        row_upper.append(at_most)

    low, up = lower.copy(), upper.copy()
    prev = np.arange(n)
    offset = n
    for w, b in layers[:-1]:
        m = w.shape[0]
        z_low = np.maximum(w, 0) @ low + np.minimum(w, 0) @ up + b
        z_up = np.maximum(w, 0) @ up + np.minimum(w, 0) @ low + b
        a_cols, delta_cols = np.arange(offset, offset + m), np.arange(offset + m, offset + 2 * m)
        offset += 2 * m
        col_lower += [np.zeros(m), np.zeros(m)]
        col_upper += [np.maximum(z_up, 0), np.ones(m)]
        integrality += [np.zeros(m), np.ones(m)]
        for j in range(m):
            row = np.zeros(total)
            row[a_cols[j]] = 1
            row[prev] = -w[j]
            constrain(row.copy(), b[j], np.inf)          # a >= z
            row[delta_cols[j]] = -z_low[j]
            constrain(row, -np.inf, b[j] - z_low[j])     # a <= z - l(1-δ)
            row = np.zeros(total)
            row[a_cols[j]] = 1
            row[delta_cols[j]] = -z_up[j]
            constrain(row, -np.inf, 0.0)                  # a <= u δ
        low, up = np.maximum(z_low, 0), np.maximum(z_up, 0)
        prev = a_cols
    w, b = layers[-1]
    t = total - 1
    for c, bound in zip(C, d):
        row = np.zeros(total)
        row[prev] = c @ w
        row[t] = -1
        constrain(row, -np.inf, bound - c @ b)
    col_lower.append([-1e4])
    col_upper.append([1e4])
    integrality.append([0])
    cost = np.zeros(total)
    cost[t] = 1
    result = milp(cost, constraints=LinearConstraint(np.array(rows), row_lower, row_upper),
                  bounds=ScipyBounds(np.concatenate(col_lower), np.concatenate(col_upper)),
                  integrality=np.concatenate(integrality), options={"mip_rel_gap": 0, "presolve": True})
    assert result.success, result.message
    return float(result.fun)


def reference_min_enumeration(model: nn.Sequential, lower: np.ndarray, upper: np.ndarray,
                              C: np.ndarray, d: np.ndarray) -> tuple[float, np.ndarray]:
    """min over the box of max_r (C_r y - d_r) by one LP per activation pattern; also the minimiser."""
    layers = network_matrices(model)
    n = len(lower)
    best, best_x = np.inf, None
    hidden = [w.shape[0] for w, _ in layers[:-1]]
    for pattern in itertools.product([0.0, 1.0], repeat=sum(hidden)):
        A, c0 = np.eye(n), np.zeros(n)  # current activations as A x + c0
        sign_rows, sign_rhs, cursor = [], [], 0
        for (w, b), size in zip(layers[:-1], hidden):
            zA, zc = w @ A, w @ c0 + b
            mask = np.array(pattern[cursor:cursor + size])
            cursor += size
            for j in range(size):  # active: z >= 0  ->  -z <= 0 ; inactive: z <= 0
                sign = -1.0 if mask[j] else 1.0
                sign_rows.append(sign * zA[j])
                sign_rhs.append(-sign * zc[j])
            A, c0 = mask[:, None] * zA, mask * zc
        w, b = layers[-1]
        yA, yc = w @ A, w @ c0 + b
        A_ub = [np.append(row, 0.0) for row in sign_rows] + [np.append(c @ yA, -1.0) for c in C]
        b_ub = sign_rhs + [bound - c @ yc for c, bound in zip(C, d)]
        result = linprog(np.append(np.zeros(n), 1.0), A_ub=np.array(A_ub), b_ub=np.array(b_ub),
                         bounds=[*zip(lower, upper), (None, None)], method="highs")
        if result.status == 0 and result.fun < best:
            best, best_x = float(result.fun), result.x[:n]
    return best, best_x


def reference_verdict(mins: list[float]) -> str:
    if min(mins) < -CLEAR:
        return "sat"
    if min(mins) > CLEAR:
        return "unsat"
    return "ambiguous"


# ---------------------------------------------------------------- tests

def random_property(rng: np.random.Generator, model: nn.Sequential, lower, upper, outputs: int):
    """Disjuncts of random kinds, offsets placed near the exact optimum so all stages get work."""
    kind = rng.integers(3)
    if kind == 0:  # robustness: some other class reaches the label
        label = int(rng.integers(outputs))
        disjuncts = []
        for j in range(outputs):
            if j != label:
                row = np.zeros(outputs)
                row[label], row[j] = 1.0, -1.0
                disjuncts.append((row[None], np.zeros(1)))
    elif kind == 1:  # one multi-row conjunction with constants
        rows = rng.integers(2, 4)
        disjuncts = [(rng.normal(size=(rows, outputs)), rng.normal(size=rows))]
    else:  # several disjuncts of single constant bounds Y_j <= c
        disjuncts = []
        for j in rng.choice(outputs, size=2, replace=False):
            row = np.zeros(outputs)
            row[j] = 1.0
            disjuncts.append((row[None], np.array([0.0])))
    shifted = []
    for C, d in disjuncts:  # move d so the disjunct's exact margin becomes a random small value
        base = reference_min_all_binary(model, lower, upper, C, d)
        shift = rng.choice([-1, 1], p=[0.6, 0.4]) * 10.0 ** rng.uniform(-4, -1)
        shifted.append((C, d + base + shift))
    return shifted


def test_random_instances_agree_with_exact_reference(tmp_path):
    rng = np.random.default_rng(2024)
    cache = ModelCache()
    decided = {"sat": 0, "unsat": 0}
    for trial in range(24):
        inputs, outputs = int(rng.integers(2, 5)), int(rng.integers(2, 4))
        hidden = tuple(int(h) for h in rng.integers(3, 8, size=int(rng.integers(1, 3))))
        model = random_network(trial, inputs, hidden, outputs)
        onnx_path = export(model, tmp_path / f"net{trial}.onnx", (1, inputs))
        centre = rng.uniform(-1, 1, size=inputs)
        eps = float(rng.choice([0.0, 0.05, 0.2, 0.5], p=[0.1, 0.2, 0.3, 0.4]))
        lower, upper = centre - eps, centre + eps
        disjuncts = random_property(rng, model, lower, upper, outputs)
        vnnlib = write_vnnlib(tmp_path / f"p{trial}.vnnlib", lower, upper, outputs, disjuncts)
        result = verify_instance(onnx_path, vnnlib, options=FAST, cache=cache)
        minimum = min(reference_min_all_binary(model, lower, upper, C, d) for C, d in disjuncts)
        expected = reference_verdict([minimum])
        context = f"trial {trial}: {result.verdict} ({result.stage}) vs reference {expected}; {result.message}"
        # the margin's bracket holds the exact margin (up to float32 rounding) and agrees with the verdict
        slack = 1e-4 * (1 + abs(minimum))
        assert (result.margin_lower is None) == (result.stage == "centre"), context   # no bound stage ran
        assert result.margin_lower is None or result.margin_lower <= minimum + slack, context
        assert result.margin_upper is None or minimum <= result.margin_upper + slack, context
        assert result.verdict != "unsat" or result.margin_lower >= 0, context
        assert result.verdict != "sat" or (result.margin_upper is not None and result.margin_upper <= 0), context
        if result.verdict == "sat":
            check_counterexample(result, onnx_path, lower, upper, disjuncts)
        if expected != "ambiguous":
            assert result.verdict == expected, context
            decided[expected] += 1
        else:
            assert result.verdict in ("sat", "unknown"), context
    assert decided["sat"] >= 3 and decided["unsat"] >= 3, decided


def test_enumeration_and_all_binary_references_agree():
    rng = np.random.default_rng(7)
    for seed in range(4):
        model = random_network(100 + seed, 2, (3, 3), 2)
        lower = rng.uniform(-1, 0, size=2)
        upper = lower + 0.8
        C, d = rng.normal(size=(2, 2)), rng.normal(size=2)
        enumerated, _ = reference_min_enumeration(model, lower, upper, C, d)
        assert reference_min_all_binary(model, lower, upper, C, d) == pytest.approx(enumerated, abs=1e-6)


@pytest.fixture(scope="module")
def exact_minimum_instance(tmp_path_factory):
    """A tiny network, a box, one row c, and the float64 value of c·y at c·y's exact minimiser."""
    model = random_network(5, 3, (6, 5), 3)
    onnx_path = export(model, tmp_path_factory.mktemp("tiny") / "net.onnx", (1, 3))
    lower, upper = np.full(3, -0.5), np.full(3, 0.5)
    C = np.array([[1.0, -1.0, 0.5]])
    minimum, minimiser = reference_min_enumeration(model, lower, upper, C, np.zeros(1))
    achieved = float((C @ dense_network(load_onnx_graph(onnx_path)).forward(minimiser[None])[0])[0])
    assert achieved == pytest.approx(minimum, abs=1e-7)
    return onnx_path, lower, upper, C, achieved


@pytest.mark.parametrize("margin, allowed", [
    (-1e-3, {"unsat"}), (-1e-4, {"unsat"}), (-1e-5, {"unsat", "unknown"}),
    (1e-7, {"unknown", "sat"}), (1e-5, {"sat"}), (1e-3, {"sat"}),
])
def test_tiny_margins(tmp_path, exact_minimum_instance, margin, allowed):
    """d = (exact minimum of c·y) + margin. A positive margin is a real violation: never unsat, however small
    (within the float32 tolerance it may stay unknown); a margin of −1e-5 holds exactly but lies within the
    tolerance (unknown allowed, sat not: no point reaches it); beyond the tolerance the verdict is exact."""
    onnx_path, lower, upper, C, achieved = exact_minimum_instance
    disjuncts = [(C, np.array([achieved + margin]))]
    vnnlib = write_vnnlib(tmp_path / "p.vnnlib", lower, upper, 3, disjuncts)
    result = verify_instance(onnx_path, vnnlib, options=FAST)
    assert result.verdict in allowed, (result.verdict, result.stage, result.message)
    if result.verdict == "sat":
        check_counterexample(result, onnx_path, lower, upper, disjuncts)


@pytest.mark.parametrize("shift, expected", [(1e-3, "sat"), (-1e-3, "unsat")])
def test_degenerate_box_eps_zero(tmp_path, shift, expected):
    model = random_network(11, 4, (8,), 3)
    onnx_path = export(model, tmp_path / "net.onnx", (1, 4))
    point = np.array([0.25, -0.5, 0.125, 0.75], dtype=np.float32).astype(np.float64)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y = session.run(None, {"input": point.astype(np.float32)[None]})[0][0].astype(np.float64)
    C = np.array([[1.0, -2.0, 0.0], [0.0, 1.0, 1.0]])
    disjuncts = [(C, C @ y + shift)]
    vnnlib = write_vnnlib(tmp_path / "p.vnnlib", point, point, 3, disjuncts)
    result = verify_instance(onnx_path, vnnlib, options=FAST)
    assert result.verdict == expected
    if expected == "sat":
        check_counterexample(result, onnx_path, point, point, disjuncts)


def test_milp_reference_matches_the_all_binary_reference():
    """The exact MILP the other tests judge branch and bound by, against this module's independent one."""
    rng = np.random.default_rng(3)
    for seed in range(6):
        model = random_network(200 + seed, 3, (6, 6), 3)
        network = ReluNetwork(tuple(AffineLayer(w, b) for w, b in network_matrices(model)), (1, 3))
        lower = rng.uniform(-1, 0.5, size=3)
        upper = lower + rng.uniform(0.05, 0.6, size=3)
        C, d = rng.normal(size=(2, 3)), np.zeros(2)
        minimum = reference_min_all_binary(model, lower, upper, C, d)
        bounds = interval_preactivation_bounds(network, lower, upper)
        for margin in (-1e-3, 1e-3):
            outcome = solve_disjunct(network, bounds, lower, upper, C, d + minimum + margin, time_limit=20)
            if margin < 0:
                assert outcome.status == "refuted", (seed, outcome)
            else:
                assert outcome.status == "candidate" and outcome.objective <= 0, (seed, outcome)
                assert np.all(outcome.x >= lower - 1e-9) and np.all(outcome.x <= upper + 1e-9)
                assert np.all(C @ network.forward(outcome.x[None])[0] <= d + minimum + margin + 1e-6)


@pytest.mark.parametrize("method", ["IBP", "CROWN", "alpha-CROWN"])
def test_bound_stages_contain_sampled_values(method):
    model = random_network(31, 4, (10, 8), 3)
    network = ReluNetwork(tuple(AffineLayer(w, b) for w, b in network_matrices(model)), (1, 4))
    rng = np.random.default_rng(0)
    lower = rng.uniform(-1, 0, size=4)
    upper = lower + 0.4
    C = rng.normal(size=(3, 3))
    stages = LirpaBoundStages(network.to_graph(), alpha_iterations=5)
    spec_lower = stages.spec_lower_bounds(lower, upper, C, method)
    pre_bounds = stages.preactivation_bounds()
    samples = rng.uniform(lower, upper, size=(3000, 4))
    samples[:16] = np.array(list(itertools.product(*zip(lower, upper))))  # the box's corners
    assert np.all((network.forward(samples) @ C.T).min(axis=0) >= spec_lower - 1e-5)
    activations = samples
    for layer, (low, up) in zip(network.layers[:-1], pre_bounds.values()):
        z = activations @ layer.weight.T + layer.bias
        assert np.all(z >= low) and np.all(z <= up)
        activations = np.maximum(z, 0)


@pytest.mark.parametrize("second_box_threshold, expected", [(-1e3, "unsat"), (1e3, "sat")])
def test_disjunction_of_input_boxes(tmp_path, second_box_threshold, expected):
    """A file whose cases have different input boxes holds only if every case holds."""
    model = random_network(41, 2, (4,), 2)
    onnx_path = export(model, tmp_path / "net.onnx", (1, 2))
    header = "(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n"
    case_one = "(and (>= X_0 0.0) (<= X_0 0.1) (>= X_1 0.0) (<= X_1 0.1) (<= Y_0 -1000.0))"
    case_two = f"(and (>= X_0 0.5) (<= X_0 0.6) (>= X_1 0.5) (<= X_1 0.6) (<= Y_1 {second_box_threshold!r}))"
    vnnlib = tmp_path / "p.vnnlib"
    vnnlib.write_text(header + f"(assert (or {case_one} {case_two}))\n")
    result = verify_instance(onnx_path, vnnlib, options=FAST)
    assert result.verdict == expected, result.message
    if expected == "sat":
        assert np.all(result.counterexample[0] >= 0.5) and np.all(result.counterexample[0] <= 0.6)


def random_relaxation(rng: np.random.Generator, rows: int, columns: int) -> LinearRelaxation:
    """A feasible LP ``min cost·v`` with random sparse rows, both row sides finite or one infinite."""
    matrix = sparse.random(rows, columns, density=0.5, random_state=rng, data_rvs=rng.standard_normal).tocsr()
    column_lower, column_upper = -rng.uniform(0.5, 2, columns), rng.uniform(0.5, 2, columns)
    activity = matrix @ rng.uniform(column_lower, column_upper)          # rows hold at this point: feasible
    slack = rng.uniform(0.1, 1, rows)
    row_lower = np.where(rng.uniform(size=rows) < 0.5, activity - slack, -np.inf)
    row_upper = np.where(np.isfinite(row_lower), activity + slack, activity + slack * 0.1)
    return LinearRelaxation(matrix, row_lower, row_upper, column_lower, column_upper, rng.normal(size=columns), 2)


def test_safe_lower_bound_holds_for_any_multipliers_and_is_tight_for_the_solvers():
    """The bound does not trust the LP solver: random, wrong-signed or scaled multipliers still give bounds
    below the LP's minimum (checked by scipy), and HiGHS's own duals give the minimum itself."""
    rng = np.random.default_rng(5)
    for trial in range(5):
        relaxation = random_relaxation(rng, rows=12, columns=8)
        dense, lower_finite = relaxation.matrix.toarray(), np.isfinite(relaxation.row_lower)
        reference = linprog(relaxation.cost, A_ub=np.vstack([dense, -dense[lower_finite]]),
                            b_ub=np.concatenate([relaxation.row_upper, -relaxation.row_lower[lower_finite]]),
                            bounds=list(zip(relaxation.column_lower, relaxation.column_upper)), method="highs")
        assert reference.status == 0, reference.message
        bound, point = solve_relaxation(relaxation, time_limit=20)
        assert bound == pytest.approx(reference.fun, abs=1e-6) and bound <= reference.fun + 1e-9
        assert point is not None and point.shape == (relaxation.num_inputs,)
        for scale in (1e-3, 1.0, 10.0):
            for _ in range(50):
                multipliers = rng.normal(scale=scale, size=relaxation.matrix.shape[0])
                assert safe_lower_bound(relaxation, multipliers) <= reference.fun + 1e-9, trial


def test_pgd_attacks_every_open_disjunct(tmp_path):
    """Disjunct A (y0 <= -1.5) is unreachable but its slack is often the larger one, disjunct B (y1 >= 0.99)
    is reachable only at x1 >= 0.99: an ascent on the max over disjuncts follows A from three out of four
    starts and never moves x1, so the attack must pull towards each disjunct separately. One restart."""
    model = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2)).eval()
    with torch.no_grad():   # y = relu(x + 1) - 1 = x on the box [-1, 1]^2
        model[0].weight.copy_(torch.eye(2)), model[0].bias.fill_(1.0)
        model[2].weight.copy_(torch.eye(2)), model[2].bias.fill_(-1.0)
    onnx_path = export(model, tmp_path / "identity.onnx", (1, 2))
    disjuncts = [(np.array([[1.0, 0.0]]), np.array([-1.5])), (np.array([[0.0, -1.0]]), np.array([-0.99]))]
    vnnlib = write_vnnlib(tmp_path / "p.vnnlib", -np.ones(2), np.ones(2), 2, disjuncts)
    loaded = ModelCache().get(onnx_path)
    options = VerifyOptions(timeout=30, pgd_steps=20, pgd_restarts=1)
    for seed in range(8):
        torch.manual_seed(seed)
        cascade = Cascade(loaded, read_vnnlib_cases(vnnlib, 2, 2), options, deadline=time.monotonic() + 30,
                          timeout=30)
        (case,) = cascade.cases
        assert cascade.attack(case, restarts=1), seed
        x, y = case.counterexample
        assert x[1] >= 0.99 and np.allclose(y, loaded.runtime.outputs(x))
