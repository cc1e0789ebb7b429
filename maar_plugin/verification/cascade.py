"""The verification cascade for one instance, cheapest stage first.

centre point → IBP → PGD → CROWN → alpha-CROWN → BaB → LP → MILP. Attacks look for a counterexample,
which only counts once onnxruntime reproduces it on the original ONNX file, and aim at the disjuncts
still open (IBP, ten times cheaper than PGD, goes first and refutes most); bound stages refute
disjuncts (a disjunct ``C y <= d`` is empty when some row has lower bound of ``C_r y - d_r`` above a
float32 tolerance). Then one complete stage decides what is left:

- ``BaB``, batched branch and bound on ReLU splits (:mod:`~maar_plugin.verification.bab`), from the
  bound stages' pre-activation bounds, or on the input box for networks with few inputs
  (:mod:`~maar_plugin.verification.input_split`); for every network that has more than
  ``milp_max_unstable`` unstable ReLUs or no dense form (residual connections, MaxPool, large
  convolutions);
- otherwise, and where branch and bound gives up (``unknown``) on a network with a dense form, the LP
  stage bounds each open disjunct by its LP relaxation and starts a targeted PGD at the LP's
  minimiser, and the MILP decides the disjuncts that are left, exactly, likeliest violation first,
  with big-M constants from the tightest pre-activation bounds seen so far.

A property is unsat iff every disjunct of every input box is refuted, sat iff some point violates it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch._dynamo  # noqa: F401  (the first torch.optim optimiser imports it: 2-3 s inside an instance's time)

from maar_plugin.attacks import pgd_maximize
from maar_plugin.errors import MaarError
from maar_plugin.verification.bab import BabOptions, BabProblem, BranchAndBound
from maar_plugin.verification.bounds import (Bounds, LirpaBoundStages, count_unstable, interval_preactivation_bounds,
                                             outward)
from maar_plugin.verification.counterexample import OnnxRuntimeModel, confirmed_counterexample
from maar_plugin.verification.lp_bounds import disjunct_relaxation, solve_relaxation
from maar_plugin.verification.milp import MilpOutcome, solve_disjunct
from maar_plugin.verification.dense import dense_network
from maar_plugin.verification.graph import LayerGraph
from maar_plugin.verification.input_split import InputSplitSearch
from maar_plugin.verification.memory import memory_plan
from maar_plugin.verification.network import ReluNetwork
from maar_plugin.verification.onnx_graph import load_onnx_graph
from maar_plugin.verification.split_bounds import SplitBoundEngine
from maar_plugin.verification.result import BOUND_STAGES, STAGES, InstanceResult
from maar_plugin.vnnlib.property import VnnlibProperty
from maar_plugin.vnnlib.reader import read_vnnlib_cases


@dataclass(frozen=True)
class VerifyOptions:
    """Cascade settings; ``timeout`` applies where an instance brings none.

    A row ``C_r y <= d_r`` counts as refuted only when its proven lower bound of ``C_r y - d_r`` exceeds
    ``tolerance * (1 + |d_r|)``: a margin for float32 rounding in the ONNX model and in auto_LiRPA, so
    that a violation smaller than that is never hidden behind an ``unsat`` (it yields ``unknown``).
    The MILP decides instances with at most ``milp_max_unstable`` unstable ReLUs, branch and bound the
    others; ``memory_limit`` (bytes) bounds a model's estimated working memory (larger models are an
    ``error``) and the branch-and-bound domain store.
    """

    timeout: float = 60.0
    pgd_steps: int = 50
    pgd_restarts: int = 10
    alpha_iterations: int = 20
    device: str = "cpu"
    tolerance: float = 1e-5
    milp_retry_margin: float = 1e-4
    seed: int = 0
    milp_max_unstable: int = 16
    memory_limit: float = 4.0e9
    bab: BabOptions = field(default_factory=BabOptions)


@dataclass
class LoadedModel:
    """One ONNX file in the forms the cascade needs: the layer graph (auto_LiRPA, PGD, branch and bound),
    its dense form where it has one (LP, MILP) and onnxruntime's session (counterexamples)."""

    graph: LayerGraph
    network: ReluNetwork | None
    bound_stages: LirpaBoundStages
    runtime: OnnxRuntimeModel
    split_engine: SplitBoundEngine | None = None

    def engine(self) -> SplitBoundEngine:
        if self.split_engine is None:
            self.split_engine = SplitBoundEngine(self.graph, device=self.bound_stages.device)
        return self.split_engine


@dataclass
class ModelCache:
    """Loaded models by path and modification time, shared by the instances of one run; a model that
    failed to load fails again at once, with the same message."""

    device: str = "cpu"
    alpha_iterations: int = 20
    memory_limit: float = 4.0e9
    models: dict[tuple[str, float], LoadedModel | MaarError] = field(default_factory=dict)

    def get(self, path: str | Path) -> LoadedModel:
        if torch.device(self.device).type == "cuda" and not torch.cuda.is_available():
            raise MaarError(f"device {self.device!r} requested, but torch finds no CUDA device here; use --device cpu")
        path = Path(path).resolve()
        key = (str(path), path.stat().st_mtime if path.exists() else 0.0)
        if key not in self.models:
            try:
                self.models[key] = self.load(path)
            except MaarError as error:
                self.models[key] = error
        loaded = self.models[key]
        if isinstance(loaded, MaarError):
            raise loaded
        return loaded

    def load(self, path: Path) -> LoadedModel:
        graph = load_onnx_graph(path)
        plan, budget = memory_plan(graph), self.memory_limit / 2    # the other half: branch and bound's domains
        if plan.minimum > budget:
            raise MaarError(f"{path}: verifying this network needs about {2 * plan.minimum / 1e9:.1f} GB, over the "
                            f"memory limit of {self.memory_limit / 1e9:.1f} GB (--memory-limit)")
        runtime = OnnxRuntimeModel(path)
        stages = LirpaBoundStages(graph, self.device, self.alpha_iterations, plan.full_crown(budget))
        return LoadedModel(graph, dense_network(graph), stages, runtime)


@dataclass
class _Case:
    """One input box of the property and what the cascade knows about its disjuncts."""

    prop: VnnlibProperty
    refuted: np.ndarray
    undecided: list[str] = field(default_factory=list)
    preactivation: Bounds | None = None
    crown_intermediate: dict | None = None
    bab_note: str = ""
    relaxation_bounds: dict[int, float] = field(default_factory=dict)
    counterexample: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def proved(self) -> bool:
        return bool(self.refuted.all())

    def open_disjuncts(self) -> list[int]:
        return [i for i, refuted in enumerate(self.refuted) if not refuted]


PGD_NEURON_BUDGET = 2_000_000  # ReLU outputs per PGD step (batch × the network's ReLU neurons), see Cascade.attack


class _OutOfTime(Exception):
    pass


class Cascade:
    """Runs the stages on the cases of one instance until they are decided or time runs out."""

    def __init__(self, model: LoadedModel, cases: list[VnnlibProperty], options: VerifyOptions, deadline: float):
        self.model = model
        self.options = options
        self.deadline = deadline
        self.cases = [_Case(prop, np.zeros(len(prop.unsafe), dtype=bool)) for prop in cases]

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def state(self) -> str:
        if any(case.counterexample is not None for case in self.cases):
            return "falsified"
        return "proved" if all(case.proved for case in self.cases) else "open"

    def open_cases(self) -> list[_Case]:
        return [case for case in self.cases if not case.proved]

    def run_stage(self, stage: str) -> None:
        if stage == "centre":
            for case in self.open_cases():
                self.try_counterexample(case, (case.prop.input_lower + case.prop.input_upper) / 2)
        elif stage == "pgd":
            for case in self.open_cases():
                self.attack(case)
        elif stage == "alpha-CROWN" and not self.model.bound_stages.full_crown:
            return      # auto_LiRPA 0.3 allocates α for every pair of ReLUs: too large where full CROWN is
        elif stage in BOUND_STAGES:
            for case in self.open_cases():
                self.bound(case, stage)
        elif stage == "BaB":
            for case in self.open_cases():
                if self.uses_branch_and_bound(case):
                    self.branch(case)
                if case.counterexample is not None:
                    return
        elif self.model.network is None:
            return
        elif stage == "LP":
            for case in self.open_cases():
                self.relax(case)
        else:
            for case in self.open_cases():
                self.exact(case)

    def try_counterexample(self, case: _Case, candidate: np.ndarray) -> bool:
        found = confirmed_counterexample(self.model.runtime, case.prop, candidate)
        if found is not None:
            case.counterexample = found
        return found is not None

    def attack(self, case: _Case, start: np.ndarray | torch.Tensor | None = None, steps: int | None = None,
               disjuncts: list[int] | None = None, restarts: int | None = None) -> bool:
        """PGD towards each of ``disjuncts`` (default: the open ones) at once: one batch element per restart
        and disjunct, each maximising its own disjunct's smallest row slack ``d - C y`` (a gradient through
        a max over disjuncts would only ever pull towards one of them). On large networks the batch is cut
        to ``PGD_NEURON_BUDGET`` ReLU evaluations per step (at least one element per disjunct, targets
        taken in turn). Steps start at a quarter of the box's half-width and
        shrink by 1 % a step (as α,β-CROWN's attack)."""
        disjuncts = case.open_disjuncts() if disjuncts is None else disjuncts
        rows, offsets, owners = _stacked_rows(case.prop, disjuncts)
        device = self.model.bound_stages.device
        C = torch.as_tensor(rows, dtype=torch.float32, device=device)
        d = torch.as_tensor(offsets, dtype=torch.float32, device=device)
        owner = torch.as_tensor(owners, device=device)
        restarts = self.options.pgd_restarts if restarts is None else restarts
        # Row mask [D, rows]: the rows of each target disjunct; an element's value is its target's min slack.
        mask = owner[None, :] == torch.as_tensor(disjuncts, device=device)[:, None]
        affordable = PGD_NEURON_BUDGET // max(1, self.model.graph.relu_neurons())
        batch = min(restarts * len(disjuncts), max(affordable, len(disjuncts)))
        target = torch.arange(batch, device=device) % len(disjuncts)

        def violation(outputs: torch.Tensor) -> torch.Tensor:
            slack = d - outputs @ C.T
            return slack.masked_fill(~mask[target], torch.inf).min(dim=1).values

        lower = torch.as_tensor(case.prop.input_lower, dtype=torch.float32, device=device).reshape(1, -1)
        upper = torch.as_tensor(case.prop.input_upper, dtype=torch.float32, device=device).reshape(1, -1)
        lower, upper = lower.expand(len(target), -1), upper.expand(len(target), -1)
        starts = lower + torch.rand_like(lower) * (upper - lower)
        if start is not None:
            starts[: len(disjuncts)] = torch.as_tensor(start, dtype=torch.float32, device=device).reshape(1, -1)
        best = pgd_maximize(self.model.bound_stages.model, lower, upper, violation,
                            steps=self.options.pgd_steps if steps is None else steps, restarts=1, start=starts,
                            step_size=(upper - lower) / 8, step_decay=0.99, stop_above=1e-3)
        with torch.no_grad():
            scores = violation(self.model.bound_stages.model(best))
        for index in torch.argsort(scores, descending=True)[:3]:
            if self.try_counterexample(case, best[int(index)].double().cpu().numpy().reshape(-1)):
                return True
        return False

    def bound(self, case: _Case, method: str) -> None:
        open_disjuncts = case.open_disjuncts()
        rows, offsets, owners = _stacked_rows(case.prop, open_disjuncts)
        stages = self.model.bound_stages
        intermediate = case.crown_intermediate if method == "alpha-CROWN" else None
        try:
            margins = stages.spec_lower_bounds(case.prop.input_lower, case.prop.input_upper, rows, method,
                                               intermediate) - offsets
        except (RuntimeError, ValueError, AssertionError, IndexError) as error:   # auto_LiRPA internals
            case.undecided.append(f"auto_LiRPA's {method} failed on this network ({type(error).__name__})")
            return
        if method == "CROWN":
            case.crown_intermediate = stages.intermediate_bounds()
        thresholds = self.options.tolerance * (1 + np.abs(offsets))
        for disjunct in open_disjuncts:
            if np.any((margins > thresholds)[owners == disjunct]):
                case.refuted[disjunct] = True
        known = _intersect(case.preactivation, stages.preactivation_bounds())
        case.preactivation = known if self.model.network is None else interval_preactivation_bounds(
            self.model.network, case.prop.input_lower, case.prop.input_upper, known)

    def uses_branch_and_bound(self, case: _Case) -> bool:
        """Branch and bound unless the MILP is the cheaper exact stage (a dense form, few unstable ReLUs)."""
        if self.model.network is None:
            return True
        return count_unstable(self.preactivation(case)) > self.options.milp_max_unstable

    def branch(self, case: _Case) -> None:
        """Batched branch and bound over the case's open disjuncts, from its pre-activation bounds."""
        open_disjuncts = case.open_disjuncts()
        rows = max(len(case.prop.unsafe[j].bounds) for j in open_disjuncts)

        def padded(values: np.ndarray) -> np.ndarray:          # repeat the first row up to ``rows``
            return np.concatenate([values, np.repeat(values[:1], rows - len(values), axis=0)])

        C = np.stack([padded(case.prop.unsafe[j].coefficients) for j in open_disjuncts])
        offsets = np.stack([padded(case.prop.unsafe[j].bounds) for j in open_disjuncts])
        thresholds = np.stack([np.full(rows, self.tolerance(j, case)) for j in open_disjuncts])
        graph = self.model.graph
        relu_bounds = {relu: tuple(torch.as_tensor(bound, dtype=torch.float32).reshape(graph.nodes[relu].shape)
                                   for bound in pair)
                       for relu, pair in zip(graph.relu_indices(), self.preactivation(case))}
        problem = BabProblem(torch.as_tensor(C, dtype=torch.float32), torch.as_tensor(offsets, dtype=torch.float32),
                             torch.as_tensor(thresholds, dtype=torch.float32),
                             torch.as_tensor(outward(case.prop.input_lower, -1)),
                             torch.as_tensor(outward(case.prop.input_upper, 1)), relu_bounds)

        def confirm(points: torch.Tensor) -> torch.Tensor | None:
            for point in points:
                if self.try_counterexample(case, point.double().cpu().numpy()):
                    return point
            return None

        def attack(points: torch.Tensor) -> torch.Tensor | None:
            return points[0] if self.attack(case, start=points[0], steps=20, restarts=1) else None

        options = replace(self.options.bab, memory_limit=self.options.memory_limit / 2)
        if graph.num_inputs <= options.input_split_max_inputs:
            search = InputSplitSearch(self.model.bound_stages, problem, options, confirm)
        else:
            search = BranchAndBound(self.model.engine(), problem, options, confirm, attack)
        outcome = search.run(self.deadline)
        if outcome.status == "proved":
            case.refuted[open_disjuncts] = True
        elif outcome.status == "timeout":
            raise _OutOfTime
        elif outcome.status == "unknown":
            case.bab_note = f"branch and bound: {outcome.message}"

    def relax(self, case: _Case) -> None:
        """Refute each open disjunct whose LP relaxation's sound bound clears the tolerance; otherwise try the
        LP's minimiser and one PGD run started there (the relaxation is exact where no ReLU is split, so its
        minimiser is often close to a real violation that PGD from random starts misses)."""
        preactivation = self.preactivation(case)
        for disjunct in case.open_disjuncts():
            conjunction = case.prop.unsafe[disjunct]
            relaxation = disjunct_relaxation(self.model.network, preactivation, case.prop.input_lower,
                                             case.prop.input_upper, conjunction.coefficients, conjunction.bounds)
            bound, point = solve_relaxation(relaxation, self.remaining())
            if self.remaining() <= 0:
                raise _OutOfTime
            case.relaxation_bounds[disjunct] = bound
            if bound > self.tolerance(disjunct, case):
                case.refuted[disjunct] = True
            elif point is not None and (self.try_counterexample(case, point)
                                        or self.attack(case, start=point, disjuncts=[disjunct], restarts=1)):
                return

    def preactivation(self, case: _Case) -> Bounds:
        """The case's ReLU input bounds, plain intervals if no bound stage has run."""
        if case.preactivation is None and self.model.network is None:
            self.bound(case, "IBP")
        if case.preactivation is None:
            case.preactivation = interval_preactivation_bounds(self.model.network, case.prop.input_lower,
                                                               case.prop.input_upper)
        return case.preactivation

    def exact(self, case: _Case) -> None:
        """MILP per open disjunct, the one with the lowest LP bound (the likeliest violation) first."""
        self.preactivation(case)
        for disjunct in sorted(case.open_disjuncts(), key=lambda j: case.relaxation_bounds.get(j, -np.inf)):
            outcome = self.solve(case, disjunct, margin=0.0)
            if outcome.status == "candidate" and not self.try_counterexample(case, outcome.x):
                outcome = self.reproduce(case, disjunct, outcome)
            if case.counterexample is not None:
                return
            if outcome.status == "refuted":
                case.refuted[disjunct] = True
            elif outcome.status == "timeout":
                raise _OutOfTime
            elif outcome.status == "unknown":
                case.undecided.append(f"disjunct {disjunct}: {outcome.message}")

    def reproduce(self, case: _Case, disjunct: int, outcome: MilpOutcome) -> MilpOutcome:
        """Turn a float64 MILP violation that onnxruntime (float32) does not reproduce into a real one, or give up.

        Tries PGD started at the MILP point, then the MILP's deepest violation (optimised until its
        margin reaches ``milp_retry_margin``); otherwise the disjunct stays undecided (``unknown``).
        """
        if outcome.objective <= 0:
            if self.attack(case, start=outcome.x, steps=20):
                return outcome
            scale = 1 + float(np.max(np.abs(case.prop.unsafe[disjunct].bounds), initial=0.0))
            deeper = self.solve(case, disjunct, margin=self.options.milp_retry_margin * scale)
            if deeper.status == "timeout" or (deeper.status == "candidate" and self.try_counterexample(case, deeper.x)):
                return deeper
            outcome = deeper if deeper.status == "candidate" else outcome
        case.undecided.append(f"disjunct {disjunct}: the MILP's best point has margin {outcome.objective:.1e} in "
                              "float64, within the numerical tolerance; onnxruntime (float32) finds no violation there")
        return MilpOutcome("undecided")

    def solve(self, case: _Case, disjunct: int, margin: float) -> MilpOutcome:
        conjunction = case.prop.unsafe[disjunct]
        return solve_disjunct(self.model.network, case.preactivation, case.prop.input_lower, case.prop.input_upper,
                              conjunction.coefficients, conjunction.bounds, self.remaining(), required_margin=margin,
                              refute_tolerance=self.tolerance(disjunct, case))

    def tolerance(self, disjunct: int, case: _Case) -> float:
        """The margin a disjunct's lower bound must exceed to count as refuted (see VerifyOptions)."""
        bounds = case.prop.unsafe[disjunct].bounds
        return self.options.tolerance * (1 + float(np.max(np.abs(bounds), initial=0.0)))

    def unstable_relus(self) -> int | None:
        counts = [count_unstable(case.preactivation) for case in self.cases if case.preactivation is not None]
        return sum(counts) if counts else None


def _stacked_rows(prop: VnnlibProperty, disjuncts: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All rows of the given disjuncts as one spec matrix, their offsets and the disjunct of each row."""
    rows = np.concatenate([prop.unsafe[j].coefficients for j in disjuncts]).astype(np.float64)
    offsets = np.concatenate([prop.unsafe[j].bounds for j in disjuncts]).astype(np.float64)
    owners = np.concatenate([np.full(len(prop.unsafe[j].bounds), j) for j in disjuncts])
    return rows, offsets, owners


def _intersect(first: Bounds | None, second: Bounds) -> Bounds:
    if first is None:
        return second
    return [(np.maximum(a_low, b_low), np.minimum(a_up, b_up)) for (a_low, a_up), (b_low, b_up) in zip(first, second)]


def verify_instance(onnx_path: str | Path, vnnlib_path: str | Path, timeout: float | None = None,
                    options: VerifyOptions | None = None, cache: ModelCache | None = None,
                    instance: str | None = None) -> InstanceResult:
    """Verify one VNN-LIB property of one ONNX network; bad input gives verdict ``error``, never an exception."""
    options = options or VerifyOptions()
    cache = cache or ModelCache(options.device, options.alpha_iterations, options.memory_limit)
    timeout = options.timeout if timeout is None else float(timeout)
    started = time.monotonic()
    result = InstanceResult(instance or f"{Path(onnx_path).stem}__{Path(vnnlib_path).stem}",
                            str(onnx_path), str(vnnlib_path), verdict="unknown", timeout=timeout)
    try:
        model = cache.get(onnx_path)
        cases = read_vnnlib_cases(vnnlib_path, model.graph.num_inputs, model.graph.num_outputs)
    except MaarError as error:
        result.verdict, result.message = "error", str(error)
        result.seconds = time.monotonic() - started
        return result
    torch.manual_seed(options.seed)
    cascade = Cascade(model, cases, options, started + timeout)
    verdict = "unknown"
    for stage in STAGES:
        if cascade.remaining() <= 0:
            verdict = "timeout"
            break
        stage_started = time.monotonic()
        try:
            cascade.run_stage(stage)
        except _OutOfTime:
            verdict = "timeout"
        result.stage_seconds[stage] = round(time.monotonic() - stage_started, 4)
        state = cascade.state()
        result.stage_verdicts[stage] = state
        if state != "open":
            result.stage = stage
            verdict = "sat" if state == "falsified" else "unsat"
            break
        if verdict == "timeout":
            break
    result.verdict = verdict
    result.unstable_relus = cascade.unstable_relus()
    result.counterexample = next((c.counterexample for c in cascade.cases if c.counterexample is not None), None)
    notes = [note for case in cascade.cases for note in case.undecided]
    if verdict not in ("sat", "unsat"):
        notes += [case.bab_note for case in cascade.cases if case.bab_note]
    result.message = "; ".join(notes)
    result.seconds = round(time.monotonic() - started, 4)
    return result
