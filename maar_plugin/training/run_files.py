"""Reading a training run directory: its configuration and its trained model (used by evaluate and export)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from maar_plugin.data import dataset_info
from maar_plugin.errors import MaarError
from maar_plugin.models import create_model
from maar_plugin.training.checkpoint import CHECKPOINT_NAME, load_checkpoint
from maar_plugin.training.config import TrainConfig, build_config

CONFIG_NAME = "config.json"


def load_run_config(run_dir: str | Path) -> TrainConfig:
    """The run's TrainConfig; a one-line error for a missing, foreign or corrupt run directory."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MaarError(f"unknown run directory {run_dir}")
    path = run_dir / CONFIG_NAME
    if not path.is_file():
        raise MaarError(f"{run_dir} is not a training run (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MaarError(f"{path}: cannot read ({error})") from None
    if not isinstance(data, dict):
        raise MaarError(f"{path}: expected a mapping of training options")
    return build_config(overrides=data)


def load_trained_model(run_dir: str | Path,
                       device: torch.device | str = "cpu") -> tuple[nn.Sequential, TrainConfig, int]:
    """The run's model with its checkpoint's weights, in eval mode, its config, and the checkpoint's epoch."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    model = create_model(config.model, dataset_info(config.dataset))
    checkpoint = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        raise MaarError(f"{run_dir / CHECKPOINT_NAME} has no model state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        lines = str(error).splitlines()
        detail = lines[1].strip() if len(lines) > 1 else lines[0]
        raise MaarError(f"checkpoint does not match model {config.model} ({detail})") from None
    return model.to(device).eval(), config, int(checkpoint.get("epoch", -1))


def training_state(run_dir: str | Path, epochs: int) -> str:
    """'new' (no checkpoint), 'partial' (fewer than ``epochs`` finished) or 'done'."""
    checkpoint = Path(run_dir) / CHECKPOINT_NAME
    if not checkpoint.is_file():
        return "new"
    return "done" if int(load_checkpoint(checkpoint)["epoch"]) + 1 >= epochs else "partial"
