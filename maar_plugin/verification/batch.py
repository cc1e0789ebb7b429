"""Verify many instances into a results folder: VNN-COMP result files, a JSON-lines log, a CSV summary.

Layout of ``out_dir``: ``results/<instance>.txt`` (one VNN-COMP result file each, written atomically),
``log.jsonl`` (one record per finished instance, appended and flushed, so a killed run loses at most
the instance in progress and ``resume`` skips what is logged) and ``summary.csv`` (rewritten after
every instance). A shard (:mod:`shard`) writes ``log.shard-K-of-N.jsonl`` and ``summary.shard-K-of-N.csv``
instead; :func:`read_log` merges every log of a folder in csv order.
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Iterator, Protocol

from tqdm import tqdm

from maar_plugin.atomic import atomic_write_text
from maar_plugin.errors import MaarError
from maar_plugin.verification.cascade import ModelCache, VerifyOptions, verify_instance
from maar_plugin.verification.result import REPORTED_STAGES, VERDICTS, InstanceResult
from maar_plugin.verification.shard import Shard, shard_of_stem

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


Pending = tuple[int, str, Instance]  # (position in the csv, instance name, instance)


def instance_names(instances: list[Instance]) -> list[str]:
    """Stable file-system-safe names ``<onnx stem>__<vnnlib stem>``, numbered where two would collide."""
    base = [f"{i.onnx.stem}__{i.vnnlib.stem}" for i in instances]
    safe = ["".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name) for name in base]
    return [name if safe.count(name) == 1 else f"{name}_{index}" for index, name in enumerate(safe)]


def log_name(shard: Shard | None) -> str:
    return LOG_NAME if shard is None else f"log{shard.suffix}.jsonl"


def summary_name(shard: Shard | None) -> str:
    return SUMMARY_NAME if shard is None else f"summary{shard.suffix}.csv"


def _log_files(out_dir: Path) -> list[Path]:
    """``log.jsonl`` (first) and every shard's log in ``out_dir``."""
    shards = [path for path in sorted(out_dir.glob("log.shard-*.jsonl")) if shard_of_stem(path.stem)]
    return [path for path in [out_dir / LOG_NAME, *shards] if path.is_file()]


def _records(path: Path) -> list[dict]:
    """The JSON records of one log; a torn last line (killed while writing) is skipped."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_log(out_dir: str | Path) -> list[InstanceResult]:
    """Records of ``log.jsonl`` and of every shard's log, merged in csv order; later records win."""
    results: dict[str, InstanceResult] = {}
    order: dict[str, int] = {}
    for path in _log_files(Path(out_dir)):
        for record in _records(path):
            result = InstanceResult.from_log_record(record)
            results[result.instance] = result
            if isinstance(record.get("index"), int):
                order[result.instance] = record["index"]
    if len(order) == len(results):
        return sorted(results.values(), key=lambda r: order[r.instance])
    return list(results.values())  # logs written before records carried their csv index


def merge_summaries(out_dir: str | Path) -> Path | None:
    """Where ``out_dir`` holds shard logs, write their merged records as ``summary.csv`` (the file one
    process would have written) and return its path; None for an unsharded folder."""
    out_dir = Path(out_dir)
    if all(path.name == LOG_NAME for path in _log_files(out_dir)):
        return None
    atomic_write_text(out_dir / SUMMARY_NAME, summary_csv(read_log(out_dir)))
    return out_dir / SUMMARY_NAME


def _refuse_earlier_results(out_dir: Path, shard: Shard | None) -> None:
    """Without resume, a run starts only where neither its own log nor one of another split holds records
    (the other shards of the same N may well have started)."""
    count = shard.count if shard else 1
    for path in _log_files(out_dir):
        other = shard_of_stem(path.stem)
        if (path.name == log_name(shard) or (other.count if other else 1) != count) and _records(path):
            raise MaarError(f"{out_dir} already holds results ({path.name}); pass --resume to continue, "
                            "or another --out")


class Verifier(Protocol):
    """Something other than the cascade that decides a batch of instances (``--verifier abcrown``)."""

    def results(self, pending: list[Pending], out_dir: Path, options: VerifyOptions, tag: str = ""
                ) -> Iterator[tuple[int, InstanceResult]]:
        """(csv index, result) of every pending instance, in any order, each as soon as it is known; its own
        files go into ``out_dir`` under names that carry ``tag`` (a shard's suffix)."""


def needs_retry(result: InstanceResult, retry_open: float | None) -> bool:
    """Whether ``result`` is open (timeout, unknown) and was verified with less time than ``retry_open``."""
    return (retry_open is not None and result.verdict in ("timeout", "unknown")
            and (result.timeout or 0.0) < retry_open)


def _cascade_results(pending: list[Pending], options: VerifyOptions) -> Iterator[tuple[int, InstanceResult]]:
    cache = ModelCache(options.device, options.alpha_iterations)
    for index, name, instance in pending:
        yield index, _verify_guarded(instance, name, options, cache)


def verify_instances(instances: Iterable[Instance | tuple], out_dir: str | Path, resume: bool = False,
                     options: VerifyOptions | None = None, progress: bool = True,
                     shard: Shard | None = None, verifier: Verifier | None = None,
                     retry_open: float | None = None) -> list[InstanceResult]:
    """Verify every instance (``Instance`` or ``(onnx, vnnlib, timeout)``), writing results as they finish.

    An instance whose model or property cannot be read is marked ``error`` and the run goes on. With
    ``shard``, only its share is verified, into the shard's own log and summary. With ``resume``,
    instances already in a log of the folder are skipped and their logged results returned. ``verifier``
    replaces the cascade (default) with another verifier, e.g. α,β-CROWN; the folder is the same. With
    ``retry_open`` (seconds), an instance left open (timeout, unknown) with less time than that, in this
    run or in the log being resumed, is verified again with that timeout; its new record replaces the old.
    """
    options = options or VerifyOptions()
    if retry_open is not None and retry_open <= 0:
        raise MaarError(f"--retry-open must be a positive number of seconds, got {retry_open:g}")
    instances = [item if isinstance(item, Instance) else Instance(Path(item[0]), Path(item[1]), item[2])
                 for item in instances]
    shard = shard if shard is not None and shard.count > 1 else None
    out_dir = Path(out_dir)
    log_path = out_dir / log_name(shard)
    if not resume:
        _refuse_earlier_results(out_dir, shard)
    logged = {r.instance: r for r in read_log(out_dir)} if resume else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    _drop_torn_last_line(log_path)
    share = list(enumerate(zip(instance_names(instances), instances)))  # names over the whole csv
    share = shard.select(share) if shard else share
    done = {index: logged[name] for index, (name, _) in share if name in logged}
    pending = [(index, name, instance) for index, (name, instance) in share if name not in logged]
    bar = tqdm(total=len(share), initial=len(done), disable=not progress, unit="inst", dynamic_ncols=True)
    with open(log_path, "a") as log:
        for retrying in (False, True):
            if retrying:   # what the first pass or the resumed log left open, again with more time
                pending = [(index, name, replace(instance, timeout=retry_open)) for index, (name, instance) in share
                           if needs_retry(done[index], retry_open)]
            found = (verifier.results(pending, out_dir, options, shard.suffix if shard else "") if verifier
                     else _cascade_results(pending, options))
            limits = {index: instance.timeout or options.timeout for index, _, instance in pending}
            for index, result in found:
                result.timeout = limits[index] if result.timeout is None else result.timeout
                atomic_write_text(out_dir / "results" / f"{result.instance}.txt", result.vnncomp_text())
                log.write(json.dumps({**result.log_record(), "index": index}) + "\n")
                log.flush()
                done[index] = result
                atomic_write_text(out_dir / summary_name(shard), summary_csv(_in_csv_order(done)))
                bar.update(0 if retrying else 1)
                bar.set_postfix_str(_counts(list(done.values())))
    bar.close()
    atomic_write_text(out_dir / summary_name(shard), summary_csv(_in_csv_order(done)))
    return _in_csv_order(done)


def _in_csv_order(done: dict[int, InstanceResult]) -> list[InstanceResult]:
    return [done[index] for index in sorted(done)]


def verify_in_processes(instances: list[Instance], out_dir: str | Path, jobs: int, resume: bool = False,
                        options: VerifyOptions | None = None, progress: bool = True,
                        verifier: Verifier | None = None, retry_open: float | None = None) -> list[InstanceResult]:
    """verify_instances over ``jobs`` local worker processes, one shard each with an equal share of the
    CPU threads (no progress bars); returns the instances' merged results in csv order and writes the
    merged summary.csv."""
    if jobs < 1:
        raise MaarError(f"--jobs must be at least 1, got {jobs}")
    if jobs == 1:
        return verify_instances(instances, out_dir, resume=resume, options=options, progress=progress,
                                verifier=verifier, retry_open=retry_open)
    shards = [Shard(index, jobs) for index in range(jobs)]
    if not resume:
        for shard in shards:
            _refuse_earlier_results(Path(out_dir), shard)
    names = instance_names(instances)
    done = {result.instance for result in read_log(out_dir) if not needs_retry(result, retry_open)} if resume else set()
    if not set(names) <= done:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = [pool.submit(_verify_shard, instances, out_dir, resume, options, shard, threads, verifier,
                                   retry_open)
                       for shard in shards]
            for future in futures:
                future.result()
    merge_summaries(out_dir)
    logged = {result.instance: result for result in read_log(out_dir)}
    return [logged[name] for name in names]


def _verify_shard(instances: list[Instance], out_dir: str | Path, resume: bool, options: VerifyOptions | None,
                  shard: Shard, threads: int, verifier: Verifier | None, retry_open: float | None) -> None:
    import torch

    torch.set_num_threads(threads)
    verify_instances(instances, out_dir, resume=resume, options=options, progress=False, shard=shard,
                     verifier=verifier, retry_open=retry_open)


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
                    + [f"seconds_{stage}" for stage in REPORTED_STAGES])
    for r in results:
        writer.writerow([r.instance, r.onnx, r.vnnlib, r.verdict, r.stage or "", f"{r.seconds:.3f}",
                         "" if r.unstable_relus is None else r.unstable_relus, r.message]
                        + [r.stage_seconds.get(stage, "") for stage in REPORTED_STAGES])
    return buffer.getvalue()
