"""The outcome of verifying one instance, and the VNN-COMP result-file text for it."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from maar_plugin.verification.counterexample import counterexample_text

STAGES = ("centre", "IBP", "pgd", "CROWN", "alpha-CROWN", "BaB", "LP", "MILP")
ABCROWN_STAGE = "abcrown"  # the one stage of a verdict reported by α,β-CROWN (``--verifier abcrown``)
REPORTED_STAGES = (*STAGES, ABCROWN_STAGE)
BOUND_STAGES = ("IBP", "CROWN", "alpha-CROWN")
VERDICTS = ("unsat", "sat", "unknown", "timeout", "error")


@dataclass
class InstanceResult:
    """Verdict of one (ONNX, VNN-LIB) instance.

    ``stage_verdicts`` maps each stage that ran, in cascade order, to the state after it: ``proved``,
    ``falsified`` or ``open``; ``stage`` is the first stage whose state is not ``open`` (None if none).
    Bound stages run until one proves, so ``stage`` in BOUND_STAGES is the first bound method that
    certifies the instance on its own (given the disjuncts the earlier bound stages refuted).
    ``timeout`` is the time limit the instance was verified with.
    """

    instance: str
    onnx: str
    vnnlib: str
    verdict: str
    stage: str | None = None
    seconds: float = 0.0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_verdicts: dict[str, str] = field(default_factory=dict)
    unstable_relus: int | None = None
    message: str = ""
    timeout: float | None = None
    counterexample: tuple[np.ndarray, np.ndarray] | None = None

    def log_record(self) -> dict:
        """The JSON-lines record (everything but the counterexample, which is in the result file)."""
        record = asdict(self)
        record.pop("counterexample")
        return record

    def vnncomp_text(self) -> str:
        """VNN-COMP result file: the verdict word, plus the assignment for ``sat``."""
        if self.verdict == "sat" and self.counterexample is not None:
            return counterexample_text(*self.counterexample)
        return self.verdict + "\n"

    @classmethod
    def from_log_record(cls, record: dict) -> "InstanceResult":
        names = set(cls.__dataclass_fields__) - {"counterexample"}
        return cls(**{key: value for key, value in record.items() if key in names})


def certified_by(results: list[InstanceResult], stage: str) -> int:
    """Instances proved (unsat) by ``stage`` or an earlier stage of the cascade: cumulative counts."""
    allowed = REPORTED_STAGES[:REPORTED_STAGES.index(stage) + 1]
    return sum(1 for r in results if r.verdict == "unsat" and r.stage in allowed)
