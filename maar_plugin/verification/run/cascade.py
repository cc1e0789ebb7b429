"""The verification cascade for one instance, cheapest stage first.

centre point → IBP → CROWN → PGD → alpha-CROWN → BaB. Attacks look for a counterexample, which only
counts once the reference model (onnxruntime on the original ONNX file) reproduces it, and aim at the
disjuncts still open (IBP and CROWN, cheaper than PGD on all but the largest networks, go first and refute
most; PGD before alpha-CROWN, whose optimisation costs more than an attack); bound stages refute
disjuncts (a disjunct ``C y <= d`` is empty when some row has lower bound of ``C_r y - d_r`` above a
float32 tolerance). Then branch and bound decides what is left: on ReLU splits
(:mod:`~maar_plugin.verification.search.bab`), from the bound stages' pre-activation bounds, or on the
input box for networks with few inputs (:mod:`~maar_plugin.verification.search.input_split`).

A property is unsat iff every disjunct of every input box is refuted, sat iff some point violates it.
An unexpected failure is the verdict ``error`` with its traceback in the log, so that a batch goes on;
``MAAR_DEBUG=1`` raises it instead.
"""
from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch._dynamo

from maar_plugin.bounds.lirpa import IntermediateBounds, failed_inside_lirpa
from maar_plugin.errors import MaarError
from maar_plugin.verification.bounding.lirpa_stages import Bounds, count_unstable, intersect, outward
from maar_plugin.verification.instances import Pending
from maar_plugin.verification.network.runtime import confirmed_counterexample
from maar_plugin.verification.options import VerifyOptions
from maar_plugin.verification.result import STAGES, InstanceResult, Stage, StageState, Verdict
from maar_plugin.verification.run.models import LoadedModel, ModelCache
from maar_plugin.verification.search.attack import DisjunctAttack, stacked_rows
from maar_plugin.verification.search.bab import BabProblem, BranchAndBound
from maar_plugin.verification.search.input_split import InputSplitSearch
from maar_plugin.vnnlib.property import VnnlibProperty
from maar_plugin.vnnlib.reader import read_vnnlib_cases


def debugging() -> bool:
    """``MAAR_DEBUG=1``: unexpected failures are raised, not recorded."""
    return os.environ.get("MAAR_DEBUG", "") not in ("", "0")


@dataclass
class _Case:
    """One input box of the property and what the cascade knows about its disjuncts."""

    prop: VnnlibProperty
    refuted: np.ndarray
    undecided: list[str] = field(default_factory=list)
    preactivation: Bounds | None = None
    crown_intermediate: IntermediateBounds | None = None
    bab_note: str = ""
    failure: str = ""
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    attack_seconds: float = 0.0     # of the last PGD round on this case
    # The margin of disjunct j is min_box max_r (C_r y − d_r) (> 0: refuted); ``margin_lower`` [j] the best
    # proven lower bound of each, ``margin_upper`` the least margin of any disjunct an attack point reached.
    margin_lower: np.ndarray = field(init=False)
    margin_upper: float = np.inf

    def __post_init__(self) -> None:
        self.margin_lower = np.full(len(self.refuted), -np.inf)

    @property
    def proved(self) -> bool:
        return bool(self.refuted.all())

    def open_disjuncts(self) -> list[int]:
        return [i for i, refuted in enumerate(self.refuted) if not refuted]


ATTACK_SHARE = 0.25  # of an instance's timeout, for PGD's escalating restarts before branch and bound
ALPHA_SHARE = 0.5    # of the time left, at most, for one alpha-CROWN optimisation
# Where branch and bound has nothing to split (Sigmoid/Tanh only, no unstable ReLU), alpha-CROWN is the last
# bound stage: one optimisation of every layer's slopes, up to this many steps (α,β-CROWN's for ERAN's
# sigmoid networks), for the time left less what the escalating attack after it may take.
FINAL_ALPHA_ITERATIONS = 1000


class _OutOfTime(Exception):
    pass


class Cascade:
    """Runs the stages on the cases of one instance until they are decided or time runs out."""

    def __init__(self, model: LoadedModel, cases: list[VnnlibProperty], options: VerifyOptions, deadline: float,
                 timeout: float):
        self.model = model
        self.options = options
        self.deadline = deadline
        self.timeout = timeout
        self.cases = [_Case(prop, np.zeros(len(prop.unsafe), dtype=bool)) for prop in cases]

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def state(self) -> StageState:
        if any(case.counterexample is not None for case in self.cases):
            return "falsified"
        return "proved" if all(case.proved for case in self.cases) else "open"

    def open_cases(self) -> list[_Case]:
        return [case for case in self.cases if not case.proved]

    def run_stage(self, stage: Stage) -> None:
        runs: dict[Stage, Callable[[], None]] = {
            "centre": self.try_centres, "IBP": lambda: self.bound_all("IBP"), "pgd": self.attack_all,
            "CROWN": lambda: self.bound_all("CROWN"), "alpha-CROWN": lambda: self.bound_all("alpha-CROWN"),
            "BaB": self.branch_all}
        runs[stage]()

    def try_centres(self) -> None:
        for case in self.open_cases():
            self.try_counterexample(case, (case.prop.input_lower + case.prop.input_upper) / 2)

    def attack_all(self) -> None:
        """PGD with ``pgd_restarts`` per open disjunct that IBP and CROWN left (more restarts wait until every
        bound stage has failed)."""
        for case in self.open_cases():
            self.attack(case)

    def attack_harder(self, case: _Case) -> None:
        """PGD with ten, a hundred, … times ``pgd_restarts``, on networks cheap enough (within the step
        budget), while the next round, ten times as long as the last, fits ATTACK_SHARE of the timeout.
        Run where every bound stage has failed, before branch and bound: there a counterexample is
        often a needle that ten random starts miss (ACAS Xu property 2), and provable instances never
        pay for it."""
        started, share = time.monotonic(), ATTACK_SHARE * self.timeout
        restarts = 10 * self.options.pgd_restarts
        while self.affordable_restarts(case, restarts) and not case.proved and \
                time.monotonic() - started + 10 * case.attack_seconds <= min(share, self.remaining()):
            if self.attack(case, restarts=restarts):
                return
            restarts *= 10

    def bound_all(self, method: Stage) -> None:
        if method == "alpha-CROWN" and not self.model.bound_stages.full_crown:
            return      # auto_LiRPA 0.3 allocates α for every pair of ReLUs: too large where full CROWN is
        for case in self.open_cases():
            self.bound(case, method)

    def branch_all(self) -> None:
        for case in self.open_cases():
            self.attack_harder(case)
            if case.counterexample is None:
                self.branch(case)
            if case.counterexample is not None:
                return

    def try_counterexample(self, case: _Case, candidate: np.ndarray) -> bool:
        found = confirmed_counterexample(self.model.runtime, case.prop, candidate)
        if found is not None:
            case.counterexample = found
        return found is not None

    def affordable_restarts(self, case: _Case, restarts: int) -> bool:
        """Whether ``restarts`` per open disjunct fit one PGD step's budget."""
        attack = DisjunctAttack(self.model.bound_stages.model, case.prop, self.model.bound_stages.device,
                                self.model.graph.multiply_adds())
        return restarts * len(case.open_disjuncts()) <= attack.affordable

    def attack(self, case: _Case, starts: np.ndarray | torch.Tensor | None = None, steps: int | None = None,
               disjuncts: list[int] | None = None, restarts: int | None = None) -> bool:
        """PGD towards each of ``disjuncts`` (default: the open ones; :mod:`~..search.attack`), from ``starts``
        and random points (``restarts`` per disjunct, default ``pgd_restarts``); the best three points are
        tried on the reference model."""
        disjuncts = case.open_disjuncts() if disjuncts is None else disjuncts
        attack = DisjunctAttack(self.model.bound_stages.model, case.prop, self.model.bound_stages.device,
                                self.model.graph.multiply_adds())
        starts = None if starts is None else torch.as_tensor(starts, dtype=torch.float32).reshape(
            -1, self.model.graph.num_inputs)
        started = time.monotonic()
        points, violations = attack.candidates(disjuncts, self.options.pgd_restarts if restarts is None else restarts,
                                               self.options.pgd_steps if steps is None else steps, starts)
        case.attack_seconds = time.monotonic() - started
        if len(violations):
            case.margin_upper = min(case.margin_upper, -float(violations[0]))
        return any(self.try_counterexample(case, point.double().cpu().numpy().reshape(-1)) for point in points)

    def bound(self, case: _Case, method: Stage) -> None:
        """Refute the case's open disjuncts by ``method``'s bounds. alpha-CROWN first optimises the final layer's
        slopes only, over CROWN's intermediate bounds (cheap); where that leaves a disjunct open, it optimises
        every layer's slopes (auto_LiRPA's full alpha-CROWN: tighter intermediate bounds, which branch and
        bound then starts from). Where branch and bound would have nothing to split (:meth:`nothing_to_split`),
        one optimisation of every layer's slopes takes the time left but the escalating attack's share."""
        if method == "alpha-CROWN" and self.nothing_to_split(case):
            share = max(ALPHA_SHARE, 1 - ATTACK_SHARE * self.timeout / max(self.remaining(), 1e-9))
            self.bound_with(case, method, None, FINAL_ALPHA_ITERATIONS, share)
            return
        self.bound_with(case, method, case.crown_intermediate if method == "alpha-CROWN" else None)
        if method == "alpha-CROWN" and not case.proved and case.crown_intermediate is not None:
            self.bound_with(case, method, None)

    def nothing_to_split(self, case: _Case) -> bool:
        """Whether the network has Sigmoid/Tanh activations (whose relaxation branch and bound keeps) and the
        case no unstable ReLU: branch and bound could then only end ``unknown``."""
        relus = self.model.graph.relu_indices()
        return self.model.bound_stages.s_shaped and case.preactivation is not None and \
            count_unstable(case.preactivation, relus) == 0

    def bound_with(self, case: _Case, method: Stage, intermediate: IntermediateBounds | None,
                   iterations: int | None = None, share: float = ALPHA_SHARE) -> None:
        open_disjuncts = case.open_disjuncts()
        rows, offsets, owners = stacked_rows(case.prop, open_disjuncts)
        stages = self.model.bound_stages
        thresholds = self.options.tolerance * (1 + np.abs(offsets))
        # alpha-CROWN's slope optimisation stops once every row is proved, or after ``share`` of the time left
        # (branch and bound gets the rest); a network whose optimisation step is slow then cannot overrun.
        deadline = time.monotonic() + share * self.remaining()
        try:
            margins = stages.spec_lower_bounds(case.prop.input_lower, case.prop.input_upper, rows, method,
                                               intermediate, deadline, offsets + thresholds, iterations) - offsets
        except Exception as error:
            if debugging() or not failed_inside_lirpa(error):
                raise
            case.undecided.append(f"auto_LiRPA's {method} failed on this network ({type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''})")
            case.failure = case.failure or traceback.format_exc()
            return
        if method == "CROWN":
            case.crown_intermediate = stages.intermediate_bounds()
        for disjunct in open_disjuncts:
            owned = owners == disjunct
            case.margin_lower[disjunct] = max(case.margin_lower[disjunct], float(np.max(margins[owned])))
            if np.any((margins > thresholds)[owned]):
                case.refuted[disjunct] = True
        case.preactivation = intersect(case.preactivation, stages.preactivation_bounds())

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
        relu_bounds = {index: (torch.as_tensor(low, dtype=torch.float32).reshape(graph.nodes[index].shape),
                               torch.as_tensor(high, dtype=torch.float32).reshape(graph.nodes[index].shape))
                       for index, (low, high) in self.preactivation(case).items()}
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
            return points[0] if self.attack(case, starts=points, steps=20, restarts=len(points)) else None

        options, memory = self.options.bab, self.model.memory
        search: InputSplitSearch | BranchAndBound
        if graph.num_inputs <= options.input_split_max_inputs:
            search = InputSplitSearch(self.model.engine(), problem, options, memory, confirm)
        else:
            search = BranchAndBound(self.model.engine(), problem, options, memory, confirm, attack)
        outcome = search.run(self.deadline)
        if outcome.lowest is not None:
            case.margin_lower[open_disjuncts] = np.maximum(case.margin_lower[open_disjuncts],
                                                           outcome.lowest.double().cpu().numpy())
        if outcome.status == "proved":       # every domain refuted: each margin is above 0
            case.margin_lower[open_disjuncts] = np.maximum(case.margin_lower[open_disjuncts], 0.0)
            case.refuted[open_disjuncts] = True
        elif outcome.status == "timeout":
            raise _OutOfTime
        elif outcome.status == "unknown":
            case.bab_note = f"branch and bound: {outcome.message}"

    def preactivation(self, case: _Case) -> Bounds:
        """The case's ReLU input bounds, from IBP if no bound stage has run yet."""
        if case.preactivation is None:
            self.bound(case, "IBP")
        if case.preactivation is None:      # auto_LiRPA's IBP failed on this network
            raise MaarError("no bound stage could bound this network's ReLU inputs; see the log's traceback")
        return case.preactivation

    def tolerance(self, disjunct: int, case: _Case) -> float:
        """The margin a disjunct's lower bound must exceed to count as refuted (see VerifyOptions)."""
        bounds = case.prop.unsafe[disjunct].bounds
        return self.options.tolerance * (1 + float(np.max(np.abs(bounds), initial=0.0)))

    def margin_bracket(self) -> tuple[float | None, float | None]:
        """Bounds of the property's margin (see :class:`InstanceResult`), None where unknown."""
        lower = min(float(np.min(case.margin_lower)) for case in self.cases)
        upper = min(case.margin_upper for case in self.cases)
        for case in self.cases:
            if case.counterexample is not None:
                y = np.asarray(case.counterexample[1], dtype=np.float64).reshape(-1)
                upper = min(upper, min(float(np.max(c.coefficients @ y - c.bounds)) for c in case.prop.unsafe))
        return (round(lower, 6) if np.isfinite(lower) else None, round(upper, 6) if np.isfinite(upper) else None)

    def unstable_relus(self) -> int | None:
        relus = self.model.graph.relu_indices()
        counts = [count_unstable(case.preactivation, relus) for case in self.cases if case.preactivation is not None]
        return sum(counts) if counts else None


def verify_instance(onnx_path: str | Path, vnnlib_path: str | Path, timeout: float | None = None,
                    options: VerifyOptions | None = None, cache: ModelCache | None = None,
                    instance: str | None = None) -> InstanceResult:
    """Verify one VNN-LIB property of one ONNX network. Bad input (a one-line MaarError) and unexpected
    failures (with their traceback) give the verdict ``error``, never an exception (but see ``MAAR_DEBUG``)."""
    options = options or VerifyOptions()
    cache = cache or ModelCache(options)
    timeout = options.timeout if timeout is None else float(timeout)
    started = time.monotonic()
    result = InstanceResult(instance or f"{Path(onnx_path).stem}__{Path(vnnlib_path).stem}",
                            str(onnx_path), str(vnnlib_path), verdict="unknown", timeout=timeout)

    def decide() -> InstanceResult:
        model = cache.get(onnx_path)
        cases = read_vnnlib_cases(vnnlib_path, model.graph.num_inputs, model.graph.num_outputs)
        return verify_cases(model, cases, options, result, started)

    return guarded(decide, result, started)


def guarded(decide: Callable[[], InstanceResult], result: InstanceResult, started: float) -> InstanceResult:
    """``decide()``, or else ``result`` with the verdict ``error``: a MaarError's one-line message, or an
    unexpected failure's first line with its traceback (raised instead under ``MAAR_DEBUG``)."""
    try:
        return decide()
    except MaarError as error:
        result.verdict, result.message = "error", str(error)
    except Exception as error:  # a bug or a library failure on one instance must not stop the batch
        if debugging():
            raise
        result.verdict, result.message = "error", f"{type(error).__name__}: {error}".splitlines()[0]
        result.traceback = traceback.format_exc()
    result.seconds = round(time.monotonic() - started, 4)
    return result


def verify_cases(model: LoadedModel, cases: list[VnnlibProperty], options: VerifyOptions, result: InstanceResult,
                 started: float) -> InstanceResult:
    """Run the cascade on the input boxes of one property until they are decided or ``result.timeout``
    seconds after ``started`` have passed; fills in and returns ``result``."""
    torch.manual_seed(options.seed)
    timeout = result.timeout or options.timeout
    cascade = Cascade(model, cases, options, started + timeout, timeout)
    verdict: Verdict = "unknown"
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
    result.margin_lower, result.margin_upper = cascade.margin_bracket()
    notes = [note for case in cascade.cases for note in case.undecided]
    if verdict not in ("sat", "unsat"):
        notes += [case.bab_note for case in cascade.cases if case.bab_note]
    result.message = "; ".join(notes)
    result.traceback = next((case.failure for case in cascade.cases if case.failure), "")
    result.seconds = round(time.monotonic() - started, 4)
    return result


class CascadeVerifier:
    """The cascade as a batch's verifier (:func:`~maar_plugin.verification.run.batch.verify_instances`):
    one model cache for the batch, every instance verified by :func:`verify_instance`."""

    def results(self, pending: list[Pending], out_dir: Path, options: VerifyOptions, tag: str = ""
                ) -> Iterator[tuple[int, InstanceResult]]:
        cache = ModelCache(options)
        for index, name, instance in pending:
            yield index, verify_instance(instance.onnx, instance.vnnlib, instance.timeout, options, cache, name)
