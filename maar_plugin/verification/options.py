"""Every setting of the verifier, with its default and help written once.

:class:`VerifyOptions` (the cascade) holds a :class:`BabOptions` (branch and bound). The command-line
flags of ``maar verify``, ``certify`` and ``reproduce`` are generated from these fields
(:mod:`maar_plugin.cli_options`; branch-and-bound fields get the prefix ``--bab-``), and the α,β-CROWN YAML
reader maps the keys that have an equivalent onto them (:mod:`maar_plugin.verification.abcrown.config`).
A leaf module: it imports nothing that computes, so the α,β-CROWN back end can use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from maar_plugin.errors import MaarError

BRANCHING_NAMES = ("intercept", "babsr", "fsb")   # the strategies of maar_plugin.verification.search.branching
DEVICES = ("auto", "cpu", "cuda")


def option(default: Any, help: str, **metadata: Any) -> Any:
    """A dataclass field with its help text (what the generated command-line flag shows)."""
    return field(default=default, metadata={"help": help, **metadata})


@dataclass(frozen=True)
class BabOptions:
    """Branch and bound (:mod:`maar_plugin.verification.search.bab`)."""

    batch_size: int = option(64, "domains split per iteration (twice as many children are bounded in one pass)")
    iterations: int = option(4, "Adam steps on α and β per child domain")
    root_iterations: int = option(30, "Adam steps on α and β for the root domains")
    lr_alpha: float = option(0.1, "learning rate of the ReLU slopes α in branch and bound")
    lr_beta: float = option(0.05, "learning rate of the split multipliers β")
    attack_every: int = option(10, "iterations between PGD attacks from the least-slack points")
    input_split_max_inputs: int = option(16, "networks with at most this many inputs split the input box instead "
                                             "of ReLUs")
    branching: str = option("intercept", "which unstable ReLU a domain splits on", choices=BRANCHING_NAMES)
    branching_candidates: int = option(3, "fsb: candidates per score that are bounded before choosing")
    refine_rows: int = option(0, "a later ReLU layer with at most this many unstable neurons has their bounds "
                                   "recomputed in every domain, under its splits (0: never)")

    def __post_init__(self) -> None:
        if self.branching not in BRANCHING_NAMES:
            raise MaarError(f"unknown branching strategy {self.branching!r}; choose from {', '.join(BRANCHING_NAMES)}")
        for name in ("batch_size", "branching_candidates", "attack_every"):
            if getattr(self, name) < 1:
                raise MaarError(f"bab {name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        for name in ("iterations", "root_iterations", "input_split_max_inputs", "refine_rows"):
            if getattr(self, name) < 0:
                raise MaarError(f"bab {name.replace('_', '-')} must be at least 0, not {getattr(self, name)}")


@dataclass(frozen=True)
class VerifyOptions:
    """The cascade (:mod:`maar_plugin.verification.run.cascade`).

    A row ``C_r y <= d_r`` counts as refuted only when its proven lower bound of ``C_r y - d_r`` exceeds
    ``tolerance * (1 + |d_r|)``: a margin for float32 rounding in the ONNX model and in the bound passes,
    so that a violation smaller than that is never hidden behind an ``unsat`` (it yields ``unknown``).
    """

    timeout: float = option(60.0, "seconds per instance (over the instances' own timeouts)")
    device: str = option("auto", "where the bound passes run: cuda, cpu, or auto (cuda when there is one)",
                         choices=DEVICES)
    pgd_steps: int = option(50, "PGD steps per restart")
    pgd_restarts: int = option(10, "PGD restarts per open disjunct (fewer on large networks); on small ones the PGD "
                                   "stage tries 10 and 100 times as many, within a tenth of the timeout")
    alpha_iterations: int = option(20, "alpha-CROWN optimisation steps")
    alpha_lr: float = option(0.5, "alpha-CROWN learning rate")
    memory_limit: float = option(4.0, "GB a network may need (larger ones are an error); branch and bound keeps "
                                      "its domains within it")
    tolerance: float = option(1e-5, "relative float32 margin a bound must clear to refute a row")
    seed: int = option(0, "random seed of the attacks")
    bab: BabOptions = field(default_factory=BabOptions, metadata={"help": "branch and bound", "prefix": "bab"})

    def __post_init__(self) -> None:
        if self.timeout <= 0:
            raise MaarError(f"--timeout must be positive, got {self.timeout:g}")
        if self.memory_limit <= 0:
            raise MaarError(f"--memory-limit must be positive (GB), got {self.memory_limit:g}")
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise MaarError(f"--device must be one of {', '.join(DEVICES)} (or cuda:N), got {self.device!r}")
        for name in ("pgd_steps", "alpha_iterations"):
            if getattr(self, name) < 0:
                raise MaarError(f"--{name.replace('_', '-')} must be at least 0, not {getattr(self, name)}")
        if self.pgd_restarts < 1:
            raise MaarError(f"--pgd-restarts must be at least 1, not {self.pgd_restarts}")

    @property
    def memory_bytes(self) -> float:
        return self.memory_limit * 1e9
