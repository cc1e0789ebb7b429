"""Verify many instances into a results folder: VNN-COMP result files, a JSON-lines log, a CSV summary.

Layout of ``out_dir``: ``results/<instance>.txt`` (one VNN-COMP result file each, written atomically),
``log.jsonl`` (one record per finished instance, appended and flushed, so a killed run loses at most
the instance in progress and ``resume`` skips what is logged) and ``summary.csv`` (rewritten after
every instance).
"""
from __future__ import annotations

import csv
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from tqdm import tqdm

from maar_plugin.atomic import atomic_write_text
from maar_plugin.errors import MaarError
from maar_plugin.verification.cascade import ModelCache, VerifyOptions, verify_instance
from maar_plugin.verification.result import STAGES, VERDICTS, InstanceResult

LOG_NAME = "log.jsonl"
SUMMARY_NAME = "summary.csv"


@dataclass(frozen=True)
class Instance:
    """One row of an instances.csv: network, property, timeout in seconds (None: the run's default)."""

    onnx: Path
    vnnlib: Path
    timeout: float | None = None


def read_instances_csv(path: str | Path, root: str | Path | None = None) -> list[Instance]:
    """VNN-COMP ``instances.csv`` rows ``onnx,vnnlib,timeout``, paths relative to ``root`` (default: the csv's folder)."""
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


def read_log(out_dir: str | Path) -> list[InstanceResult]:
    """Records of ``log.jsonl``; a torn last line (killed while writing) is skipped, later records win."""
    path = Path(out_dir) / LOG_NAME
    if not path.exists():
        return []
    results: dict[str, InstanceResult] = {}
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        result = InstanceResult.from_log_record(record)
        results[result.instance] = result
    return list(results.values())


def verify_instances(instances: Iterable[Instance | tuple], out_dir: str | Path, resume: bool = False,
                     options: VerifyOptions | None = None, progress: bool = True) -> list[InstanceResult]:
    """Verify every instance (``Instance`` or ``(onnx, vnnlib, timeout)``), writing results as they finish.

    An instance whose model or property cannot be read is marked ``error`` and the run goes on. With
    ``resume``, instances already in the log are skipped and their logged results returned.
    """
    options = options or VerifyOptions()
    instances = [item if isinstance(item, Instance) else Instance(Path(item[0]), Path(item[1]), item[2])
                 for item in instances]
    out_dir = Path(out_dir)
    log_path = out_dir / LOG_NAME
    logged = {r.instance: r for r in read_log(out_dir)}
    if logged and not resume:
        raise MaarError(f"{out_dir} already holds results ({LOG_NAME}); pass --resume to continue, or another --out")
    out_dir.mkdir(parents=True, exist_ok=True)
    _drop_torn_last_line(log_path)
    names = instance_names(instances)
    cache = ModelCache(options.device, options.alpha_iterations)
    results: list[InstanceResult] = []
    bar = tqdm(total=len(instances), disable=not progress, unit="inst", dynamic_ncols=True)
    with open(log_path, "a") as log:
        for name, instance in zip(names, instances):
            if name in logged:
                results.append(logged[name])
                bar.update(1)
                continue
            result = _verify_guarded(instance, name, options, cache)
            atomic_write_text(out_dir / "results" / f"{name}.txt", result.vnncomp_text())
            log.write(json.dumps(result.log_record()) + "\n")
            log.flush()
            results.append(result)
            atomic_write_text(out_dir / SUMMARY_NAME, summary_csv(results))
            bar.update(1)
            bar.set_postfix_str(_counts(results))
    bar.close()
    atomic_write_text(out_dir / SUMMARY_NAME, summary_csv(results))
    return results


def _drop_torn_last_line(log_path: Path) -> None:
    """Cut a record that a killed run left half-written, so appended records start on their own line."""
    if not log_path.exists():
        return
    data = log_path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(log_path, "r+b") as log:
            log.truncate(data.rfind(b"\n") + 1)


def _verify_guarded(instance: Instance, name: str, options: VerifyOptions, cache: ModelCache) -> InstanceResult:
    """verify_instance, with any unexpected failure recorded as ``error`` so the batch goes on."""
    started = time.monotonic()
    try:
        return verify_instance(instance.onnx, instance.vnnlib, instance.timeout, options, cache, name)
    except Exception as error:  # a bug or a library failure on one instance must not stop the batch
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        return InstanceResult(name, str(instance.onnx), str(instance.vnnlib), "error",
                              seconds=round(time.monotonic() - started, 4), message=message)


def _counts(results: list[InstanceResult]) -> str:
    verdicts = [r.verdict for r in results]
    return " ".join(f"{v}={verdicts.count(v)}" for v in VERDICTS if v in verdicts)


def summary_csv(results: list[InstanceResult]) -> str:
    """One row per instance: verdict, deciding stage, seconds, unstable ReLUs, and seconds per stage."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["instance", "onnx", "vnnlib", "verdict", "stage", "seconds", "unstable_relus", "message"]
                    + [f"seconds_{stage}" for stage in STAGES])
    for r in results:
        writer.writerow([r.instance, r.onnx, r.vnnlib, r.verdict, r.stage or "", f"{r.seconds:.3f}",
                         "" if r.unstable_relus is None else r.unstable_relus, r.message]
                        + [r.stage_seconds.get(stage, "") for stage in STAGES])
    return buffer.getvalue()
