"""Training checkpoints: state dicts and RNG states only, so they load with ``weights_only=True``."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maar_plugin.atomic import atomic_write_with
from maar_plugin.errors import MaarError

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_torch_save(path: str | Path, payload: dict[str, Any]) -> None:
    atomic_write_with(path, lambda handle: torch.save(payload, handle))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise MaarError(f"no checkpoint at {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for corrupt or foreign files
        first_line = str(error).splitlines()[0]
        raise MaarError(f"{path}: cannot load checkpoint ({type(error).__name__}: {first_line})") from None
