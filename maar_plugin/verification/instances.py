"""Instances to verify: rows ``onnx,vnnlib,timeout`` of a VNN-COMP ``instances.csv``, and their names."""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from maar_plugin.errors import MaarError


@dataclass(frozen=True)
class Instance:
    """One row of an instances.csv: network, property, timeout in seconds (None: the run's default)."""

    onnx: Path
    vnnlib: Path
    timeout: float | None = None


Pending = tuple[int, str, Instance]  # (position in the csv, instance name, instance)


def read_instances_csv(path: str | Path, root: str | Path | None = None) -> list[Instance]:
    """VNN-COMP ``instances.csv`` rows ``onnx,vnnlib,timeout``, paths relative to ``root`` (default: the csv's
    folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    try:
        text = path.read_text()
    except OSError as error:
        raise MaarError(f"{path}: cannot read instances file ({error.strerror})") from None
    instances = []
    for line_number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if len(cells) not in (2, 3):
            raise MaarError(f"{path}:{line_number}: expected 'onnx,vnnlib,timeout', got {len(cells)} fields")
        try:
            timeout = float(cells[2]) if len(cells) == 3 and cells[2] else None
        except ValueError:
            raise MaarError(f"{path}:{line_number}: timeout {cells[2]!r} is not a number") from None
        instances.append(Instance(root / cells[0], root / cells[1], timeout))
    if not instances:
        raise MaarError(f"{path}: no instances")
    return instances


def instance_names(instances: list[Instance]) -> list[str]:
    """Stable file-system-safe names ``<onnx stem>__<vnnlib stem>``, numbered where two would collide."""
    base = [f"{i.onnx.stem}__{i.vnnlib.stem}" for i in instances]
    safe = ["".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) for name in base]
    return [name if safe.count(name) == 1 else f"{name}_{index}" for index, name in enumerate(safe)]
