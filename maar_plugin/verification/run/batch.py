"""Verify many instances into a results folder (:mod:`.records`), whole or as one shard, resumable.

The verifier is our cascade (:class:`~maar_plugin.verification.run.cascade.CascadeVerifier`) or another
:class:`Verifier`, e.g. α,β-CROWN (:mod:`maar_plugin.verification.abcrown`); the folder is the same.
"""
from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from maar_plugin.atomic import atomic_write_text
from maar_plugin.errors import MaarError
from maar_plugin.verification.instances import Instance, Pending, instance_names
from maar_plugin.verification.options import VerifyOptions
from maar_plugin.verification.result import VERDICTS, InstanceResult
from maar_plugin.verification.run.records import (
    drop_torn_last_line,
    log_name,
    merge_summaries,
    read_log,
    refuse_earlier_results,
    summary_csv,
    summary_name,
)
from maar_plugin.verification.run.shard import Shard


class Verifier(Protocol):
    """Something other than the cascade that decides a batch of instances (``--verifier abcrown``)."""

    def results(self, pending: list[Pending], out_dir: Path, options: VerifyOptions, tag: str = ""
                ) -> Iterator[tuple[int, InstanceResult]]:
        """(csv index, result) of every pending instance, in any order, each as soon as it is known; its own
        files go into ``out_dir`` under names that carry ``tag`` (a shard's suffix)."""


def retry_seconds(retry_open: float | None) -> float | None:
    """``--retry-open`` as a timeout: None or 0 mean no second pass; a negative value is an error."""
    if retry_open is not None and retry_open < 0:
        raise MaarError(f"--retry-open must be 0 (no retry) or a positive number of seconds, got {retry_open:g}")
    return retry_open or None


def needs_retry(result: InstanceResult, retry_open: float | None) -> bool:
    """Whether ``result`` is open (timeout, unknown) and was verified with less time than ``retry_open``."""
    return (retry_open is not None and result.verdict in ("timeout", "unknown")
            and (result.timeout or 0.0) < retry_open)


def cascade_verifier() -> Verifier:
    """Our cascade, imported on first use (it needs auto_LiRPA; the α,β-CROWN back end does not)."""
    from maar_plugin.verification.run.cascade import CascadeVerifier

    return CascadeVerifier()


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
    verifier = verifier or cascade_verifier()
    retry_open = retry_seconds(retry_open)
    given = [item if isinstance(item, Instance) else Instance(Path(item[0]), Path(item[1]), item[2])
             for item in instances]
    shard = shard if shard is not None and shard.count > 1 else None
    out_dir = Path(out_dir)
    log_path = out_dir / log_name(shard)
    if not resume:
        refuse_earlier_results(out_dir, shard)
    logged = {r.instance: r for r in read_log(out_dir)} if resume else {}
    out_dir.mkdir(parents=True, exist_ok=True)
    drop_torn_last_line(log_path)
    share = list(enumerate(zip(instance_names(given), given)))  # names over the whole csv
    share = shard.select(share) if shard else share
    done = {index: logged[name] for index, (name, _) in share if name in logged}
    pending = [(index, name, instance) for index, (name, instance) in share if name not in logged]
    bar = tqdm(total=len(share), initial=len(done), disable=not progress, unit="inst", dynamic_ncols=True)
    with open(log_path, "a") as log:
        for retrying in (False, True):
            if retrying:   # what the first pass or the resumed log left open, again with more time
                pending = [(index, name, replace(instance, timeout=retry_open)) for index, (name, instance) in share
                           if needs_retry(done[index], retry_open)]
            found = verifier.results(pending, out_dir, options, shard.suffix if shard else "")
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
            refuse_earlier_results(Path(out_dir), shard)
    retry_open = retry_seconds(retry_open)
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


def _counts(results: list[InstanceResult]) -> str:
    verdicts = [r.verdict for r in results]
    return " ".join(f"{v}={verdicts.count(v)}" for v in VERDICTS if v in verdicts)
