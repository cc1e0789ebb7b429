"""Side by side: `maar verify` against α,β-CROWN on the instances of a VNN-COMP instances.csv.

    python benchmarks/verifier_comparison.py --instances DIR/instances.csv \\
        --abcrown PATH/alpha-beta-CROWN --abcrown-python PATH/venv/bin/python \\
        --timeout 60 --limit 15 --out benchmarks/results/comparison [--abcrown-config BASE.yaml] [--threads 1]

Nothing is downloaded or built: bring your own α,β-CROWN checkout and its interpreter. Per instance, one
after the other, it runs `python -m maar_plugin verify --onnx --vnnlib` (this interpreter) and
`abcrown.py --config` (a YAML generated from BASE, default: α,β-CROWN's defaults with `bab`, pointing at
the instance, device cpu, the same timeout), each as its own process. It records the verdict, wall time
(process start to exit, imports included), each verifier's own time, and peak resident memory (the
process's ru_maxrss from wait4). It prints one row per instance and a summary: decided counts,
sat/unsat contradictions, median time ratio where both decide, and the instances our cascade needed
branching for (stage BaB or MILP). Rows go to OUT/comparison.csv and OUT/comparison.json; each run's
output lies in OUT/maar/ and OUT/abcrown/.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from maar_plugin.atomic import atomic_write_text
from maar_plugin.verification import Instance, instance_names, read_instances_csv, read_log

REPO = Path(__file__).resolve().parent.parent
DECIDED = ("sat", "unsat")
BRANCHING_STAGES = ("BaB", "MILP")
KILL_GRACE = 60.0  # seconds past the timeout before a run that overran is killed


@dataclass
class Run:
    """One verifier's run on one instance."""

    verdict: str
    wall_s: float
    own_s: float | None
    peak_mb: float
    stage: str | None = None
    message: str = ""


@dataclass
class Row:
    instance: str
    timeout: float
    maar: Run
    abcrown: Run

    @property
    def ratio(self) -> float | None:
        """Our wall time over α,β-CROWN's (below 1: we are faster)."""
        return self.maar.wall_s / self.abcrown.wall_s if self.abcrown.wall_s > 0 else None

    def flat(self) -> dict:
        record = {"instance": self.instance, "timeout": self.timeout}
        for name in ("maar", "abcrown"):
            record.update({f"{name}_{key}": value for key, value in asdict(getattr(self, name)).items()})
        record["ratio"] = self.ratio
        return record


def run_measured(command: list[str], cwd: Path, log_path: Path, limit: float, env: dict
                 ) -> tuple[int | None, float, float]:
    """Run ``command`` with output to ``log_path``; (exit code or None if killed, wall seconds, peak MB)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
        killed = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if not killed and time.monotonic() - start > limit:
                os.killpg(process.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)
    wall = time.monotonic() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    return (None if killed else process.returncode), wall, usage.ru_maxrss / 1024.0


def tail(path: Path, lines: int = 3) -> str:
    text = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return " | ".join(line.strip() for line in text[-lines:])


def child_env(threads: int | None, pythonpath: Path | None = None) -> dict:
    """This environment, with ``threads`` OpenMP/MKL threads (None: as is) and ``pythonpath`` prepended."""
    env = dict(os.environ)
    if threads is not None:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(pythonpath), env.get("PYTHONPATH")]))
    return env


def run_maar(instance: Instance, name: str, timeout: float, out: Path, threads: int | None,
             options: Sequence[str] = ()) -> Run:
    """`maar verify` on the CPU (as α,β-CROWN runs) on one instance in its own process, with ``options``
    added; verdict and stage from its log.jsonl."""
    folder = out / "maar" / name
    command = [sys.executable, "-m", "maar_plugin", "verify", "--onnx", str(instance.onnx.resolve()),
               "--vnnlib", str(instance.vnnlib.resolve()), "--timeout", str(timeout), "--out", str(folder),
               "--device", "cpu", "--no-progress", *options]
    code, wall, peak = run_measured(command, REPO, out / "maar" / f"{name}.log", timeout + KILL_GRACE,
                                    child_env(threads, REPO))
    records = read_log(folder) if folder.exists() else []
    if code is None:
        return Run("killed", wall, None, peak, message=f"killed after {wall:.0f} s")
    if not records:
        return Run("error", wall, None, peak, message=f"exit {code}: {tail(out / 'maar' / f'{name}.log')}")
    result = records[-1]
    return Run(result.verdict, wall, result.seconds, peak, result.stage, result.message)


def abcrown_config(base: dict, instance: Instance, timeout: float, results_file: Path) -> dict:
    """``base`` pointed at one instance (single-vnnlib mode), on the CPU, with ``timeout``."""
    config = json.loads(json.dumps(base))  # deep copy of plain YAML data
    general = config.setdefault("general", {})
    general.update(device="cpu", results_file=str(results_file), csv_name=None, root_path="")
    general.setdefault("complete_verifier", "bab")
    config.pop("data", None)  # start/end select rows of a csv
    config.setdefault("model", {})["onnx_path"] = str(instance.onnx.absolute())  # links stay links
    config.setdefault("specification", {})["vnnlib_path"] = str(instance.vnnlib.absolute())
    config.setdefault("bab", {})["timeout"] = timeout
    return config


def staged(instance: Instance, folder: Path) -> Instance:
    """``instance`` through links in a fresh ``folder``: α,β-CROWN caches what it parsed beside its inputs
    (``*.compiled``, ``*.optimized``), so every run starts cold, as ours does, and the user's checkout
    stays as it was."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    links = []
    for path in (instance.onnx, instance.vnnlib):
        link = folder / path.name
        link.symlink_to(path.resolve())
        links.append(link)
    return Instance(links[0], links[1], instance.timeout)


def drop_caches(folder: Path) -> None:
    """What α,β-CROWN wrote into a staging folder (the links stay, so the run's config still resolves)."""
    for path in folder.iterdir():
        if path.is_symlink():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def run_abcrown(instance: Instance, name: str, timeout: float, out: Path, abcrown: Path, python: Path,
                base: dict, threads: int | None) -> Run:
    """α,β-CROWN's abcrown.py on one instance (staged, see :func:`staged`); verdict from its results file,
    its time from 'Time:'."""
    folder = out / "abcrown"
    folder.mkdir(parents=True, exist_ok=True)
    results_file = folder / f"{name}.txt"
    results_file.unlink(missing_ok=True)
    config_path = folder / f"{name}.yaml"
    stage = folder / f"{name}.files"
    atomic_write_text(config_path, yaml.safe_dump(abcrown_config(base, staged(instance, stage), timeout,
                                                                 results_file.resolve())))
    log_path = folder / f"{name}.log"
    command = [str(python), "abcrown.py", "--config", str(config_path.resolve())]
    code, wall, peak = run_measured(command, abcrown / "complete_verifier", log_path, timeout + KILL_GRACE,
                                    child_env(threads))
    drop_caches(stage)
    if code is None:
        return Run("killed", wall, None, peak, message=f"killed after {wall:.0f} s")
    if not results_file.exists():
        return Run("error", wall, None, peak, message=f"exit {code}: {tail(log_path)}")
    verdict = results_file.read_text().split("\n", 1)[0].strip()
    times = re.findall(r"^Time: ([0-9.]+)", log_path.read_text(errors="replace"), flags=re.MULTILINE)
    return Run(verdict, wall, float(times[-1]) if times else None, peak)


def contradiction(row: Row) -> bool:
    return {row.maar.verdict, row.abcrown.verdict} == set(DECIDED)


def table(rows: list[Row]) -> str:
    header = (f"{'instance':<40} {'maar':>7} {'stage':>11} {'wall s':>7} {'own s':>7} {'MB':>6}   "
              f"{'abcrown':>7} {'wall s':>7} {'own s':>7} {'MB':>6} {'ratio':>6}")
    lines = [header, "-" * len(header)]
    own = lambda value: f"{value:7.1f}" if value is not None else f"{'-':>7}"
    for row in rows:
        ratio = f"{row.ratio:6.2f}" if row.ratio is not None else f"{'-':>6}"
        mark = "  CONTRADICTION" if contradiction(row) else ""
        lines.append(f"{row.instance[:40]:<40} {row.maar.verdict:>7} {row.maar.stage or '-':>11} "
                     f"{row.maar.wall_s:7.1f} {own(row.maar.own_s)} {row.maar.peak_mb:6.0f}   "
                     f"{row.abcrown.verdict:>7} {row.abcrown.wall_s:7.1f} {own(row.abcrown.own_s)} "
                     f"{row.abcrown.peak_mb:6.0f} {ratio}{mark}")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    both = [row for row in rows if row.maar.verdict in DECIDED and row.abcrown.verdict in DECIDED]
    branching = [row for row in rows if row.maar.stage in BRANCHING_STAGES]
    slower = [row for row in branching if row.ratio is not None and row.ratio > 1]
    slower_own = [row for row in branching if row.abcrown.verdict in DECIDED and row.maar.own_s
                  and row.abcrown.own_s and row.maar.own_s > row.abcrown.own_s]
    errors = [row for row in rows if row.maar.verdict in ("error", "killed")]
    lines = [f"instances: {len(rows)}"]
    for name in ("maar", "abcrown"):
        runs = [getattr(row, name) for row in rows]
        counts = {verdict: sum(run.verdict == verdict for run in runs) for verdict in
                  ("unsat", "sat", "timeout", "unknown", "error", "killed")}
        lines.append(f"{name:<8} decided {counts['unsat'] + counts['sat']:3d} "
                     f"({', '.join(f'{key} {value}' for key, value in counts.items() if value)}), "
                     f"median wall {statistics.median(run.wall_s for run in runs):.1f} s, "
                     f"max peak {max(run.peak_mb for run in runs):.0f} MB")
    lines.append(f"contradictions (sat vs unsat): {sum(contradiction(row) for row in rows)}")
    if both:
        wall = statistics.median(row.ratio for row in both)
        own = [row.maar.own_s / row.abcrown.own_s for row in both if row.maar.own_s and row.abcrown.own_s]
        lines.append(f"both decide {len(both)}: median time ratio maar/abcrown {wall:.2f} (wall)"
                     + (f", {statistics.median(own):.2f} (own time)" if own else ""))
    lines.append(f"needed branching in maar (stage BaB/MILP): {len(branching)}"
                 + (f" ({', '.join(row.instance for row in branching)})" if branching else ""))
    lines.append(f"maar slower than abcrown on those, wall time: {len(slower)}"
                 + (f" ({', '.join(f'{row.instance} x{row.ratio:.2f}' for row in slower)})" if slower else ""))
    own_times = [f"{row.instance} {row.maar.own_s:.1f} vs {row.abcrown.own_s:.1f} s" for row in slower_own]
    lines.append(f"maar slower than abcrown on those, own time: {len(slower_own)}"
                 + (f" ({', '.join(own_times)})" if own_times else ""))
    for row in errors:
        lines.append(f"maar {row.maar.verdict} on {row.instance}: {row.maar.message}")
    return "\n".join(lines)


def read_rows(out: Path) -> dict[tuple[str, float], Row]:
    """The rows of an earlier run in ``out`` (none if it has no comparison.json), by instance and timeout."""
    path = out / "comparison.json"
    if not path.exists():
        return {}
    rows = {}
    for record in json.loads(path.read_text()):
        runs = {name: Run(**{key[len(name) + 1:]: value for key, value in record.items()
                             if key.startswith(name + "_")}) for name in ("maar", "abcrown")}
        rows[(record["instance"], record["timeout"])] = Row(record["instance"], record["timeout"], **runs)
    return rows


def write_rows(rows: list[Row], out: Path) -> None:
    records = [row.flat() for row in rows]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    atomic_write_text(out / "comparison.csv", buffer.getvalue())
    atomic_write_text(out / "comparison.json", json.dumps(records, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", required=True, help="VNN-COMP instances.csv")
    parser.add_argument("--abcrown", required=True, type=Path, help="an alpha-beta-CROWN checkout")
    parser.add_argument("--abcrown-python", required=True, type=Path, help="the interpreter α,β-CROWN runs in")
    parser.add_argument("--abcrown-config", type=Path, help="base α,β-CROWN YAML (default: its defaults, bab)")
    parser.add_argument("--timeout", type=float, help="seconds per instance for both (default: the csv's, else 60)")
    parser.add_argument("--limit", type=int, help="only the first N instances")
    parser.add_argument("--threads", type=int,
                        help="OMP_NUM_THREADS/MKL_NUM_THREADS for both verifiers (default: inherited)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/comparison"), help="results folder")
    parser.add_argument("--reuse", action="append", choices=("maar", "abcrown"), default=[],
                        help="take this verifier's runs from OUT/comparison.json where it has the instance "
                             "(repeatable; e.g. rerun maar after a change against the same α,β-CROWN runs)")
    args = parser.parse_args()

    if not (args.abcrown / "complete_verifier" / "abcrown.py").exists():
        parser.error(f"{args.abcrown}: no complete_verifier/abcrown.py (not an alpha-beta-CROWN checkout)")
    base = yaml.safe_load(args.abcrown_config.read_text()) if args.abcrown_config else {}
    instances = read_instances_csv(args.instances)[:args.limit]
    out = args.out.resolve()
    earlier = read_rows(out) if args.reuse else {}
    rows = []
    for instance, name in zip(instances, instance_names(instances)):
        timeout = args.timeout or instance.timeout or 60.0
        kept = earlier.get((name, timeout))
        maar = kept.maar if kept and "maar" in args.reuse else run_maar(instance, name, timeout, out, args.threads)
        abcrown = kept.abcrown if kept and "abcrown" in args.reuse else run_abcrown(
            instance, name, timeout, out, args.abcrown.resolve(), args.abcrown_python, base, args.threads)
        rows.append(Row(name, timeout, maar, abcrown))
        print(f"{name}: maar {maar.verdict} ({maar.stage}, {maar.wall_s:.1f} s), "
              f"abcrown {abcrown.verdict} ({abcrown.wall_s:.1f} s)", flush=True)
        write_rows(rows, out)
    print()
    print(table(rows))
    print()
    print(summary(rows))


if __name__ == "__main__":
    main()
