"""The outcome of verifying one instance, its stages and verdicts, and its VNN-COMP result-file text."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal, get_args

import numpy as np

Verdict = Literal["unsat", "sat", "unknown", "timeout", "error"]
Stage = Literal["centre", "IBP", "CROWN", "pgd", "alpha-CROWN", "BaB"]
StageState = Literal["proved", "falsified", "open"]

VERDICTS: tuple[Verdict, ...] = get_args(Verdict)
STAGES: tuple[Stage, ...] = get_args(Stage)          # the cascade's stages, in the order they run
BOUND_STAGES: tuple[Stage, ...] = ("IBP", "CROWN", "alpha-CROWN")
ABCROWN_STAGE = "abcrown"  # the one stage of a verdict reported by α,β-CROWN (``--verifier abcrown``)
# Logs of earlier versions may name the LP and MILP stages, which ran after branch and bound.
REPORTED_STAGES = (*STAGES, "LP", "MILP", ABCROWN_STAGE)


@dataclass
class InstanceResult:
    """Verdict of one (ONNX, VNN-LIB) instance.

    ``stage_verdicts`` maps each stage that ran, in cascade order, to the state after it: ``proved``,
    ``falsified`` or ``open``; ``stage`` is the first stage whose state is not ``open`` (None if none).
    Bound stages run until one proves, so ``stage`` in BOUND_STAGES is the first bound method that
    certifies the instance on its own (given the disjuncts the earlier bound stages refuted).
    ``timeout`` is the time limit the instance was verified with; ``traceback`` that of an unexpected
    failure (verdict ``error``), so that a log explains it.

    ``margin_lower`` ≤ margin ≤ ``margin_upper`` bracket the property's margin, ``min`` over its input boxes
    and unsafe disjuncts of ``min_box max_r (C_r y − d_r)`` (> 0: unsat; ≤ 0: sat): the lower end proven by
    the bound stages and branch and bound, the upper end the least margin an attack point or counterexample
    reached. For an open instance they say how far it is from being decided either way (None: not known).
    """

    instance: str
    onnx: str
    vnnlib: str
    verdict: Verdict
    stage: str | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_verdicts: dict[str, StageState] = field(default_factory=dict)
    unstable_relus: int | None = None
    message: str = ""
    timeout: float | None = None
    traceback: str = ""
    counterexample: tuple[np.ndarray, np.ndarray] | None = None
    margin_lower: float | None = None
    margin_upper: float | None = None

    def log_record(self) -> dict:
        """The JSON-lines record (everything but the counterexample, which is in the result file)."""
        record = asdict(self)
        record.pop("counterexample")
        if not record["traceback"]:
            record.pop("traceback")
        return record

    def vnncomp_text(self) -> str:
        """VNN-COMP result file: the verdict word, plus the assignment for ``sat``."""
        if self.verdict == "sat" and self.counterexample is not None:
            return counterexample_text(*self.counterexample)
        return self.verdict + "\n"

    @classmethod
    def from_log_record(cls, record: dict) -> InstanceResult:
        names = set(cls.__dataclass_fields__) - {"counterexample"}
        return cls(**{key: value for key, value in record.items() if key in names})


def counterexample_text(x: np.ndarray, y: np.ndarray) -> str:
    """VNN-COMP result text: ``sat`` then ``((X_0 v) ... (Y_0 v) ...)``; X exact (float64), Y as float32."""
    entries = [f"(X_{i} {float(v)!r})" for i, v in enumerate(np.asarray(x, dtype=np.float64))]
    entries += [f"(Y_{j} {float(v)!r})" for j, v in enumerate(np.asarray(y, dtype=np.float32))]
    return "sat\n(" + "\n ".join(entries) + ")\n"


def certified_by(results: list[InstanceResult], stage: str) -> int:
    """Instances proved (unsat) by ``stage`` or an earlier stage of the cascade: cumulative counts."""
    allowed = REPORTED_STAGES[:REPORTED_STAGES.index(stage) + 1]
    return sum(1 for r in results if r.verdict == "unsat" and r.stage in allowed)
