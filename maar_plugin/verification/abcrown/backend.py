"""α,β-CROWN as a verification back end (``maar verify --verifier abcrown --abcrown PATH``).

One ``abcrown.py`` process per batch: the pending instances go into a csv (absolute paths, each with its
timeout), the config is the one ``maar export`` writes (or the user's ``--abcrown-config``) pointed at that csv,
and the per-instance outcome is read from the process's output as it comes (``abcrown_output``), so each
verdict is logged at once and ``--resume`` skips it like one of the cascade's. Its own results file is a
pickle and is never read. Every ``sat`` must come with a counterexample that onnxruntime confirms on
the original ONNX file; α,β-CROWN writes each one to the same ``attack.cex_path``, so a counterexample
that is missing or fails (the next instance may have overwritten it) sends its instance to a batch of its
own, where nothing can overwrite it; if it fails there too the verdict is ``unknown``. An instance that
runs ``grace`` seconds past its timeout is killed with its process, and one that crashes it is an
``error``; either way a new process continues with the rest. Files: ``OUT/abcrown/`` (config, csv,
α,β-CROWN's output of every process, its counterexample file and pickle).
"""
from __future__ import annotations

import copy
import csv
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import torch
import yaml

from maar_plugin.atomic import atomic_write_text
from maar_plugin.devices import resolve_device
from maar_plugin.errors import MaarError
from maar_plugin.export.abcrown import abcrown_config
from maar_plugin.verification.abcrown.output import Banner, Outcome, parse_assignment, parse_line, verdict_of
from maar_plugin.verification.instances import Instance, Pending
from maar_plugin.verification.network.runtime import OnnxRuntimeModel, confirmed_counterexample
from maar_plugin.verification.options import VerifyOptions
from maar_plugin.verification.result import ABCROWN_STAGE, InstanceResult, StageState, Verdict
from maar_plugin.vnnlib.reader import read_vnnlib_cases

WORK_DIR = "abcrown"
STAGE_STATES: dict[str, StageState] = {"unsat": "proved", "sat": "falsified"}
# Keys that select instances or name output files: replaced by the back end's own.
_REPLACED = {"general": ("csv_name", "root_path", "results_file", "save_adv_example", "device"),
             "model": ("onnx_path", "onnx_path_prefix", "input_shape"),
             "specification": ("vnnlib_path", "vnnlib_path_prefix"),
             "data": ("start", "end", "select_instance"),
             "attack": ("cex_path",)}


@dataclass(frozen=True)
class AbcrownVerifier:
    """A user's α,β-CROWN: its checkout (``complete_verifier/abcrown.py``) and the Python it runs in.

    ``config``: an α,β-CROWN config mapping to run with (None: the one ``maar export`` writes).
    ``grace``: seconds past an instance's timeout before its process is killed; ``startup_limit``: seconds
    a process may take to start an instance (imports, model loading).
    """

    checkout: Path
    python: Path = field(default_factory=lambda: Path(sys.executable))
    config: dict | None = None
    grace: float = 60.0
    startup_limit: float = 600.0

    def __post_init__(self) -> None:
        script = Path(self.checkout) / "complete_verifier" / "abcrown.py"
        if not script.is_file():
            raise MaarError(f"--abcrown {self.checkout}: no complete_verifier/abcrown.py there "
                            "(give the α,β-CROWN checkout folder)")
        if not Path(self.python).is_file():
            raise MaarError(f"--abcrown-python {self.python}: no such interpreter")

    def results(self, pending: list[Pending], out_dir: Path, options: VerifyOptions, tag: str = ""
                ) -> Iterator[tuple[int, InstanceResult]]:
        """Run α,β-CROWN over ``pending``; yields (csv index, result) as each instance finishes. Its files go
        to ``out_dir/abcrown<tag>/`` (a shard's tag keeps shards apart)."""
        work = Path(out_dir) / f"{WORK_DIR}{tag}"
        work.mkdir(parents=True, exist_ok=True)
        checker = _CounterexampleChecker()
        runnable = []
        for index, name, instance in pending:
            missing = [path for path in (instance.onnx, instance.vnnlib) if not path.is_file()]
            if missing:
                yield index, _result(name, instance, "error", message=f"{missing[0]}: no such file")
            else:
                runnable.append((index, name, instance))
        retry: list[Pending] = []
        yield from self._batch(runnable, work, options, checker, retry)
        for item in retry:
            yield from self._batch([item], work, options, checker, None)

    def _batch(self, batch: list[Pending], work: Path, options: VerifyOptions, checker: _CounterexampleChecker,
               retry: list[Pending] | None) -> Iterator[tuple[int, InstanceResult]]:
        """All of ``batch``, in as many processes as crashes and overruns take. A ``sat`` whose counterexample
        fails goes to ``retry`` (None: it is final, ``unknown``)."""
        while batch:
            run = _Process(self, batch, work, options)
            finished: set[int] = set()
            try:
                for position, verdict, seconds, message in run.outcomes():
                    index, name, instance = batch[position]
                    finished.add(position)
                    found = checker.confirm(instance, run.counterexample_path) if verdict == "sat" else None
                    if verdict == "sat" and found is None:
                        if retry is not None:
                            retry.append(batch[position])
                            continue
                        verdict = "unknown"
                        message = f"{message}, but its counterexample is missing or fails onnxruntime"
                    yield index, _result(name, instance, verdict, seconds, message, found)
            finally:
                run.stop()
            if not finished:
                raise MaarError(f"α,β-CROWN stopped without reporting an instance; see {run.log_path}")
            batch = [item for position, item in enumerate(batch) if position not in finished]


@dataclass
class _Process:
    """One ``abcrown.py`` process over a csv of instances, read line by line."""

    verifier: AbcrownVerifier
    batch: list[Pending]
    work: Path
    options: VerifyOptions
    started_any: bool = False

    def __post_init__(self) -> None:
        number = len(list(self.work.glob("run-*.log")))
        self.log_path = self.work / f"run-{number:03d}.log"
        self.counterexample_path = self.work / "counterexample.txt"
        self.counterexample_path.unlink(missing_ok=True)
        csv_path, config_path = self.work / "instances.csv", self.work / "config.yaml"
        atomic_write_text(csv_path, _csv_text(self.batch, self.options))
        config = run_config(self.verifier.config, csv_path, self.work, resolve_device(self.options.device).type,
                            self.options.timeout)
        atomic_write_text(config_path, yaml.safe_dump(config, sort_keys=False))
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        threads = str(torch.get_num_threads())
        environment.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
        self.log = open(self.log_path, "w")  # noqa: SIM115 (the reader thread writes it; stop() closes it)
        self.process = subprocess.Popen(
            [str(self.verifier.python), "abcrown.py", "--config", str(config_path.resolve())],
            cwd=Path(self.verifier.checkout) / "complete_verifier", stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=environment, text=True, errors="replace", start_new_session=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=_pump, args=(self.process.stdout, self.lines, self.log), daemon=True)
        self.reader.start()
        self.last_lines: list[str] = []

    def outcomes(self) -> Iterator[tuple[int, Verdict, float, str]]:
        """(position in the batch, verdict, seconds, message) per instance that the process finishes."""
        current: int | None = None
        started = time.monotonic()
        deadline = started + self.verifier.startup_limit
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.stop()
                if current is None:
                    raise MaarError(f"α,β-CROWN did not start an instance within {self.verifier.startup_limit:g} s; "
                                    f"see {self.log_path}") from None
                seconds = time.monotonic() - started
                yield current, "timeout", seconds, (f"α,β-CROWN ran {self.verifier.grace:g} s past the "
                                                             "timeout and was stopped")
                return
            if line is None:  # the output has ended: the process is exiting
                code = self.process.wait()
                if current is not None:
                    yield current, "error", time.monotonic() - started, (
                        f"α,β-CROWN exited with status {code}: {self._last_words()}")
                elif not self.started_any:
                    raise MaarError(f"α,β-CROWN exited with status {code} before its first instance: "
                                    f"{self._last_words()} (see {self.log_path})")
                return
            self._remember(line)
            event = parse_line(line)
            if isinstance(event, Banner) and 0 <= event.index < len(self.batch):
                current, self.started_any, started = event.index, True, time.monotonic()
                deadline = started + _timeout(self.batch[current][2], self.options) + self.verifier.grace
            elif isinstance(event, Outcome) and current is not None:
                timeout = _timeout(self.batch[current][2], self.options)
                verdict = verdict_of(event.status, event.seconds, timeout)
                message = f"α,β-CROWN: {event.status}"
                if verdict is None:
                    verdict, message = "error", f"α,β-CROWN reported a status this reader does not know: {event.status}"
                yield current, verdict, event.seconds, message
                current, deadline = None, time.monotonic() + self.verifier.startup_limit

    def _remember(self, line: str) -> None:
        if line.strip():
            self.last_lines = [*self.last_lines, line.strip()][-3:]

    def _last_words(self) -> str:
        return self.last_lines[-1][:200] if self.last_lines else "no output"

    def stop(self) -> None:
        """Kill the process (and what it started) if it still runs; close its log once all output is in."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.reader.join(timeout=10)
        self.log.close()


def _pump(stream: IO[str], lines: queue.Queue, log: IO[str]) -> None:
    """Copy the process's output into its log and the queue, line by line; None at the end."""
    for line in stream:
        log.write(line)
        log.flush()
        lines.put(line)
    lines.put(None)


class _CounterexampleChecker:
    """Confirms α,β-CROWN's counterexamples with onnxruntime on the original ONNX file."""

    def __init__(self) -> None:
        self.runtimes: dict[Path, OnnxRuntimeModel] = {}

    def confirm(self, instance: Instance, path: Path):
        """(x, y) of the counterexample in ``path`` if it violates the instance's property, else None.

        The file is consumed, so that a later instance never reads it."""
        try:
            text = path.read_text()
            path.unlink()
            x, _ = parse_assignment(text)
            runtime = self.runtimes.setdefault(instance.onnx, OnnxRuntimeModel(instance.onnx))
            cases = read_vnnlib_cases(instance.vnnlib)
        except (OSError, MaarError):
            return None
        for case in cases:
            if x.shape == case.input_lower.shape:
                found = confirmed_counterexample(runtime, case, x)
                if found is not None:
                    return found
        return None


def run_config(base: dict | None, csv_path: Path, work: Path, device: str, timeout: float) -> dict:
    """``base`` (default: the config ``maar export`` writes) pointed at ``csv_path``, writing into ``work``."""
    config = copy.deepcopy(base) if base is not None else abcrown_config(None, timeout, device)
    for section, keys in _REPLACED.items():
        part = config.get(section)
        if isinstance(part, dict):
            for key in keys:
                part.pop(key, None)
            if not part:
                config.pop(section)
    general = config.setdefault("general", {})
    general.update(root_path=str(csv_path.parent.resolve()), csv_name=csv_path.name, device=device,
                   results_file=str((work / "results.pkl").resolve()), save_adv_example=True)
    config.setdefault("attack", {})["cex_path"] = str((work / "counterexample.txt").resolve())
    config.setdefault("bab", {}).setdefault("timeout", float(timeout))
    return config


def _csv_text(batch: list[Pending], options: VerifyOptions) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for _, _, instance in batch:
        writer.writerow([instance.onnx.resolve(), instance.vnnlib.resolve(), f"{_timeout(instance, options):g}"])
    return buffer.getvalue()


def _timeout(instance: Instance, options: VerifyOptions) -> float:
    return instance.timeout if instance.timeout is not None else options.timeout


def _result(name: str, instance: Instance, verdict: Verdict, seconds: float = 0.0, message: str = "",
            counterexample=None) -> InstanceResult:
    """An α,β-CROWN verdict as a record of ours: stage ``abcrown`` (also for errors, so the log says who ran)."""
    return InstanceResult(
        name, str(instance.onnx), str(instance.vnnlib), verdict,
        stage=ABCROWN_STAGE if verdict in STAGE_STATES else None, seconds=round(seconds, 4),
        stage_seconds={ABCROWN_STAGE: round(seconds, 4)},
        stage_verdicts={ABCROWN_STAGE: STAGE_STATES.get(verdict, "open")},
        message=message, counterexample=counterexample)
