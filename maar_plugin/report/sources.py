"""The result folders a report covers, read as one :class:`ResultSource` per verifier.

A ``maar verify`` folder (``log.jsonl``, ``results/<instance>.txt``; also with ``--verifier abcrown``) is
one source, and so is a ``maar certify`` folder (its ``verification/`` folder). A side-by-side folder of
``benchmarks/verifier_comparison.py`` (``comparison.json`` or ``comparison.csv``, with ``maar/`` and
``abcrown/`` where its runs were kept) is two: ours and α,β-CROWN's. The ``sat`` results carry their
counterexample (x, y) from the result file, and the ONNX / VNN-LIB paths are resolved to files that exist
where they can be found.
"""
from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import yaml

from maar_plugin.errors import MaarError
from maar_plugin.verification import STAGES, InstanceResult, read_log

COMPARISON_JSON = "comparison.json"
COMPARISON_CSV = "comparison.csv"
COMPARISON_TOOLS = ("maar", "abcrown")
CERTIFY_RESULTS = "verification"  # where `maar certify --out DIR` verifies into
_ASSIGNMENT = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")


@dataclass
class ResultSource:
    """One verifier's results on a set of instances: one line of the cactus plot, one column pair of the
    per-instance table."""

    label: str
    results: list[InstanceResult]
    folder: Path

    @property
    def has_stages(self) -> bool:
        """Whether the results record our cascade's stages (so a stage funnel can be drawn)."""
        return any(stage in r.stage_verdicts for r in self.results for stage in STAGES)


def read_counterexample(path: Path) -> tuple[np.ndarray, np.ndarray] | None:
    """(x, y) of a VNN-COMP result file ``sat ((X_0 v) ... (Y_0 v) ...)``; None if it holds no full assignment."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    values: dict[str, dict[int, float]] = {"X": {}, "Y": {}}
    for kind, index, value in _ASSIGNMENT.findall(text):
        try:
            values[kind][int(index)] = float(value)
        except ValueError:
            return None
    arrays = []
    for kind in ("X", "Y"):
        found = values[kind]
        if not found or sorted(found) != list(range(len(found))):
            return None
        arrays.append(np.array([found[i] for i in range(len(found))], dtype=np.float64))
    return arrays[0], arrays[1]


def _resolved(path: str, folder: Path) -> str:
    """``path`` as an existing file: as given (absolute or relative to the working directory, as the verify
    run recorded it), else relative to the results folder or its parent; unchanged if none exists."""
    if not path:
        return path
    candidates = [Path(path)] if Path(path).is_absolute() else [Path(path), folder / path, folder.parent / path]
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    return path


def _with_files(result: InstanceResult, folder: Path, result_file: Path) -> InstanceResult:
    """``result`` with resolved ONNX / VNN-LIB paths and, for ``sat``, the counterexample of ``result_file``."""
    counterexample = read_counterexample(result_file) if result.verdict == "sat" else None
    return replace(result, onnx=_resolved(result.onnx, folder), vnnlib=_resolved(result.vnnlib, folder),
                   counterexample=counterexample)


def is_comparison_folder(folder: Path) -> bool:
    return (folder / COMPARISON_JSON).is_file() or (folder / COMPARISON_CSV).is_file()


def read_verify_folder(folder: Path, label: str) -> ResultSource:
    """A ``maar verify`` folder (every shard's log merged) with its counterexamples."""
    results = read_log(folder)
    if not results:
        raise MaarError(f"{folder}: no log.jsonl records and no comparison.json (is this a `maar verify --out` "
                        "folder or a verifier comparison?)")
    return ResultSource(label, [_with_files(r, folder, folder / "results" / f"{r.instance}.txt") for r in results],
                        folder)


def _number(value) -> float | None:
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def comparison_rows(folder: Path) -> list[dict]:
    """The rows of a comparison folder: ``comparison.json``, else ``comparison.csv``."""
    try:
        if (folder / COMPARISON_JSON).is_file():
            rows = json.loads((folder / COMPARISON_JSON).read_text())
        else:
            rows = list(csv.DictReader(io.StringIO((folder / COMPARISON_CSV).read_text())))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as error:
        raise MaarError(f"{folder}: cannot read the comparison ({error})") from None
    required = {"instance", *(f"{tool}_verdict" for tool in COMPARISON_TOOLS)}
    if not isinstance(rows, list) or not all(isinstance(row, dict) and required <= set(row) for row in rows):
        raise MaarError(f"{folder}: comparison rows need the columns {', '.join(sorted(required))}")
    if not rows:
        raise MaarError(f"{folder}: the comparison has no rows")
    return rows


def _comparison_result(row: dict, tool: str, folder: Path) -> InstanceResult:
    """One tool's run of a comparison row: from its own verify folder (``maar/<instance>/``) where kept,
    else from the row; time is the verifier's own where it reported one, else the wall time."""
    name = row["instance"]
    own, wall = _number(row.get(f"{tool}_own_s")), _number(row.get(f"{tool}_wall_s"))
    result = InstanceResult(name, "", "", row[f"{tool}_verdict"], stage=row.get(f"{tool}_stage") or None,
                            seconds=own if own is not None else (wall or 0.0), message=row.get(f"{tool}_message") or "",
                            timeout=_number(row.get("timeout")))
    if tool == "maar":
        kept = [r for r in read_log(folder / "maar" / name) if r.instance == name] \
            if (folder / "maar" / name).is_dir() else []
        if kept:
            result = replace(kept[-1], verdict=result.verdict, seconds=result.seconds)
        return _with_files(result, folder, folder / "maar" / name / "results" / f"{name}.txt")
    config_path = folder / "abcrown" / f"{name}.yaml"
    if config_path.is_file():
        try:
            config = yaml.safe_load(config_path.read_text()) or {}
        except yaml.YAMLError:
            config = {}
        if isinstance(config, dict):
            result = replace(result, onnx=str((config.get("model") or {}).get("onnx_path") or ""),
                             vnnlib=str((config.get("specification") or {}).get("vnnlib_path") or ""))
    return _with_files(result, folder, folder / "abcrown" / f"{name}.txt")


def read_comparison_folder(folder: Path, label: str) -> list[ResultSource]:
    """The two sources of a side-by-side folder, labelled ``<label> maar`` and ``<label> abcrown``."""
    rows = comparison_rows(folder)
    return [ResultSource(f"{label} {tool}", [_comparison_result(row, tool, folder) for row in rows], folder)
            for tool in COMPARISON_TOOLS]


def folder_labels(folders: list[Path]) -> list[str]:
    """Folder names, or the paths as given where two folders share a name."""
    names = [folder.resolve().name for folder in folders]
    return [name if names.count(name) == 1 else str(folder) for name, folder in zip(names, folders)]


def read_sources(folders: Sequence[str | Path]) -> list[ResultSource]:
    """Every source of ``folders``, in order (a comparison folder gives two)."""
    paths = [Path(folder) for folder in folders]
    sources: list[ResultSource] = []
    for path, label in zip(paths, folder_labels(paths)):
        if not path.is_dir():
            raise MaarError(f"{path}: not a folder")
        if is_comparison_folder(path):
            sources.extend(read_comparison_folder(path, label))
        elif not read_log(path) and (path / CERTIFY_RESULTS).is_dir():  # a `maar certify --out` folder
            sources.append(read_verify_folder(path / CERTIFY_RESULTS, label))
        else:
            sources.append(read_verify_folder(path, label))
    return sources
