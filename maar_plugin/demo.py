"""``maar demo``: the main job on an embedded default — train a small MAAR model on real MNIST, export
it, verify it completely, print the table. Resumable: rerunning continues where it stopped."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maar_plugin.certification import CertifiedAccuracy, certify
from maar_plugin.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from maar_plugin.training.config import build_config
from maar_plugin.training.loop import train
from maar_plugin.training.run_files import training_state

# A short schedule that takes a few minutes on a 2-core CPU (README: "make demo").
DEMO_TRAINING = {
    "dataset": "mnist", "model": "dm-small", "objective": "maar",
    "objective_args": {"base": "ibp", "lam": 0.5, "weighting": "soft"},
    "eps": 0.1, "epochs": 8, "warmup_epochs": 1, "ramp_epochs": 4, "lr_decay_epochs": [6], "batch_size": 128,
    "lr": 1e-3, "eval_count": 1000, "eval_crown_count": 200, "eval_pgd_steps": 10, "seed": 0, "device": "auto",
}


def run_demo(
    out_dir: str | Path, count: int = 100, timeout: float = 60.0, progress: bool = True,
    log: Callable[[str], None] = print,
) -> tuple[list[dict], CertifiedAccuracy]:
    """Train (or resume) the demo run in ``out_dir/run``, then certify ``count`` test images."""
    out_dir = Path(out_dir)
    run_dir = out_dir / "run"
    config = build_config(None, DEMO_TRAINING)
    state = training_state(run_dir, config.epochs)
    if state == "done":
        log(f"training already finished in {run_dir}")
        history = load_checkpoint(run_dir / CHECKPOINT_NAME)["history"]
    else:
        log(f"training {config.model} with {config.objective} ({config.objective_args}) on MNIST at ε={config.eps}, "
            f"{config.epochs} epochs")
        history = train(None if state == "partial" else config, run_dir, resume=state == "partial",
                        show_progress=progress, log=log)
    log(f"exporting {count} test images at ε={config.eps} and verifying them (timeout {timeout:g} s each)")
    certificate_dir = out_dir / "certify"
    accuracy = certify(run_dir, config.eps, count, certificate_dir, timeout=timeout,
                       resume=(certificate_dir / "verification").exists(), progress=progress)
    return history, accuracy
