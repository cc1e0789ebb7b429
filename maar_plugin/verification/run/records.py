"""The files of a results folder: one VNN-COMP result file per instance, a JSON-lines log, a CSV summary.

Layout: ``results/<instance>.txt`` (written atomically), ``log.jsonl`` (one record per finished instance,
appended and flushed, so a killed run loses at most the instance in progress and a resumed one skips
what is logged) and ``summary.csv`` (rewritten after every instance). A shard (:mod:`.shard`) writes
``log.shard-K-of-N.jsonl`` and ``summary.shard-K-of-N.csv`` instead; :func:`read_log` merges every log
of a folder in csv order and :func:`merge_summaries` writes the summary one process would have written.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from maar_plugin.atomic import atomic_write_text
from maar_plugin.errors import MaarError
from maar_plugin.verification.result import REPORTED_STAGES, InstanceResult
from maar_plugin.verification.run.shard import Shard, shard_of_stem

LOG_NAME = "log.jsonl"
SUMMARY_NAME = "summary.csv"


def log_name(shard: Shard | None) -> str:
    return LOG_NAME if shard is None else f"log{shard.suffix}.jsonl"


def summary_name(shard: Shard | None) -> str:
    return SUMMARY_NAME if shard is None else f"summary{shard.suffix}.csv"


def log_files(out_dir: Path) -> list[Path]:
    """``log.jsonl`` (first) and every shard's log in ``out_dir``."""
    shards = [path for path in sorted(out_dir.glob("log.shard-*.jsonl")) if shard_of_stem(path.stem)]
    return [path for path in [out_dir / LOG_NAME, *shards] if path.is_file()]


def log_records(path: Path) -> list[dict]:
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
    for path in log_files(Path(out_dir)):
        for record in log_records(path):
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
    if all(path.name == LOG_NAME for path in log_files(out_dir)):
        return None
    atomic_write_text(out_dir / SUMMARY_NAME, summary_csv(read_log(out_dir)))
    return out_dir / SUMMARY_NAME


def refuse_earlier_results(out_dir: Path, shard: Shard | None) -> None:
    """Without resume, a run starts only where neither its own log nor one of another split holds records
    (the other shards of the same N may well have started)."""
    count = shard.count if shard else 1
    for path in log_files(out_dir):
        other = shard_of_stem(path.stem)
        if (path.name == log_name(shard) or (other.count if other else 1) != count) and log_records(path):
            raise MaarError(f"{out_dir} already holds results ({path.name}); pass --resume to continue, "
                            "or another --out")


def drop_torn_last_line(log_path: Path) -> None:
    """Cut a record that a killed run left half-written, so appended records start on their own line."""
    if not log_path.exists():
        return
    data = log_path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(log_path, "r+b") as log:
            log.truncate(data.rfind(b"\n") + 1)


def summary_csv(results: list[InstanceResult]) -> str:
    """One row per instance: verdict, deciding stage, seconds, unstable ReLUs, message, the bracket of the
    margin, and seconds per stage."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["instance", "onnx", "vnnlib", "verdict", "stage", "seconds", "unstable_relus", "message",
                     "margin_lower", "margin_upper"] + [f"seconds_{stage}" for stage in REPORTED_STAGES])
    for r in results:
        writer.writerow([r.instance, r.onnx, r.vnnlib, r.verdict, r.stage or "", f"{r.seconds:.3f}",
                         "" if r.unstable_relus is None else r.unstable_relus, r.message,
                         "" if r.margin_lower is None else r.margin_lower,
                         "" if r.margin_upper is None else r.margin_upper]
                        + [r.stage_seconds.get(stage, "") for stage in REPORTED_STAGES])
    return buffer.getvalue()
