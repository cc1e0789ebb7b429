"""Read what α,β-CROWN reports per instance: its progress lines and its counterexample files.

``abcrown.py`` run over a csv of instances (``general.csv_name``) prints, per instance, a banner
``%%%… idx: I, vnnlib ID: J %%%…`` before loading it and ``Result: STATUS in T seconds`` when done
(``utils.Logger.summarize_results``); its ``general.results_file`` is then a pickle, which we never
read (unpickling runs code). STATUS is ``safe``/``safe-incomplete``/``safe-mip``/… (proved),
``unsafe``/``unsafe-pgd``/``unsafe-bab``/… (a counterexample), ``unknown``/``unknown-mip`` or
``timeout``, with `` (timed out)`` appended to a decided status reached after the timeout. With
``general.save_adv_example`` it writes each counterexample to ``attack.cex_path`` in the VNN-COMP
format, ``((X_0 v) … (Y_0 v) …)``, optionally after a ``sat`` line (single-instance mode).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from maar_plugin.errors import MaarError
from maar_plugin.verification.result import Verdict

_BANNER = re.compile(r"%{3,} idx: (\d+), vnnlib ID: \d+ %{3,}")
_RESULT = re.compile(r"Result: (.+?) in ([0-9.eE+-]+) seconds")
_ASSIGNMENT = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


@dataclass(frozen=True)
class Banner:
    """α,β-CROWN starts row ``index`` (from 0) of its csv."""

    index: int


@dataclass(frozen=True)
class Outcome:
    """α,β-CROWN's status for the instance it last started, and its own time for it."""

    status: str
    seconds: float


def parse_line(line: str) -> Banner | Outcome | None:
    """A banner, an outcome, or None for any other line of α,β-CROWN's output."""
    text = line.strip()
    banner = _BANNER.fullmatch(text)
    if banner:
        return Banner(int(banner[1]))
    result = _RESULT.fullmatch(text)
    if result:
        try:
            return Outcome(result[1].strip(), float(result[2]))
        except ValueError:
            return None
    return None


def verdict_of(status: str, seconds: float, timeout: float) -> Verdict | None:
    """Our verdict for an α,β-CROWN status: sat, unsat, timeout or unknown; None for a status we do not know.

    A proof or counterexample found after the timeout (``safe (timed out)``) is still one."""
    word = status.split()[0] if status.split() else ""
    if word.startswith("unsafe"):
        return "sat"
    if word.startswith("safe"):
        return "unsat"
    if word.startswith(("unknown", "timeout", "timed")):
        return "timeout" if seconds >= timeout else "unknown"
    return None


def parse_assignment(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of a VNN-COMP counterexample text ``[sat] ((X_0 v) … (Y_0 v) …)``; MaarError if malformed."""
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for kind, index, value in _ASSIGNMENT.findall(text):
        try:
            values[kind][int(index)] = float(value)
        except ValueError:
            raise MaarError(f"counterexample: X/Y value {value!r} is not a number") from None
    arrays = []
    for kind in ("X", "Y"):
        found = values[kind]
        if not found or sorted(found) != list(range(len(found))):
            raise MaarError(f"counterexample: the {kind}_i entries are missing or not numbered 0..n-1")
        arrays.append(np.array([found[i] for i in range(len(found))], dtype=np.float64))
    return arrays[0], arrays[1]
