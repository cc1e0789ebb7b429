"""Copy a `maar reproduce` folder without its bulk, to bring results back from a lent GPU machine.

Keeps the plan, every run's config, metrics, evaluations (evaluation*.json) and a slim checkpoint
(model weights in float16, epoch and history only: enough for `maar report`, `maar export` and
`maar certify`, and for `maar reproduce` to see the run as finished), and every certification's
accuracy, per-image verdicts, log and summary. VNN-LIB files and ONNX copies are dropped; `maar certify
--resume` would rewrite them. ``--light`` also drops checkpoints and verification logs: what `maar
report` reads (per-image records included), small enough to commit.

    python benchmarks/pack_reproduce.py results/mnist-eps0.3 $OUT/mnist-eps0.3
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from maar_plugin.training.checkpoint import CHECKPOINT_NAME, atomic_torch_save, load_checkpoint

RUN_FILES = ("config.json", "metrics.jsonl", "evaluation*.json")  # glob patterns
CERTIFY_FILES = ("certified_accuracy.json", "per_image.csv")  # and, unless light, VERIFICATION_FILES
VERIFICATION_FILES = ("verification/log*.jsonl", "verification/summary.csv")


def slim_checkpoint(source: Path, destination: Path) -> None:
    state = load_checkpoint(source)
    model = {key: value.half() if value.is_floating_point() else value for key, value in state["model"].items()}
    atomic_torch_save(destination, {"model": model, "epoch": state["epoch"], "history": state["history"]})


def pack(source: Path, destination: Path, light: bool = False) -> int:
    """Copy the light files of ``source`` into ``destination``; returns the bytes written."""
    destination.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "reproduce.json", destination / "reproduce.json")
    for run_dir in sorted((source / "runs").glob("*/")):
        target = destination / "runs" / run_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted({path for pattern in RUN_FILES for path in run_dir.glob(pattern) if path.is_file()}):
            shutil.copy2(path, target / path.name)
        if (run_dir / CHECKPOINT_NAME).is_file() and not light:
            slim_checkpoint(run_dir / CHECKPOINT_NAME, target / CHECKPOINT_NAME)
    for certify_dir in sorted((source / "certify").glob("*/")):
        patterns = CERTIFY_FILES if light else CERTIFY_FILES + VERIFICATION_FILES
        for path in sorted({path for pattern in patterns for path in certify_dir.glob(pattern) if path.is_file()}):
            target = destination / "certify" / certify_dir.name / path.relative_to(certify_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    return sum(path.stat().st_size for path in destination.rglob("*") if path.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a `maar reproduce` folder")
    parser.add_argument("destination", type=Path)
    parser.add_argument("--light", action="store_true",
                        help="no checkpoints and no verification logs (per-image verdicts kept)")
    arguments = parser.parse_args()
    if not (arguments.source / "reproduce.json").is_file():
        raise SystemExit(f"error: {arguments.source} is not a `maar reproduce` folder")
    size = pack(arguments.source, arguments.destination, arguments.light)
    print(f"packed {arguments.source} into {arguments.destination}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
