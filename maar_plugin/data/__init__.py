"""Datasets as whole tensors in pixel space [0, 1]; normalisation happens inside the model."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from maar_plugin.data.cifar import load_cifar10
from maar_plugin.data.mnist import load_mnist
from maar_plugin.errors import MaarError


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: input shape, classes and normalisation."""

    name: str
    input_shape: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


# CIFAR-10 std as in CROWN-IBP, auto_LiRPA's examples and Shi et al. (2021).
_DATASETS = {
    "mnist": (DatasetInfo("mnist", (1, 28, 28), 10, (0.1307,), (0.3081,)), load_mnist),
    "cifar10": (DatasetInfo("cifar10", (3, 32, 32), 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
                load_cifar10),
}
SPLITS = ("train", "test")


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def dataset_info(name: str) -> DatasetInfo:
    return _lookup(name)[0]


def load_dataset(name: str, split: str, data_dir: str | Path | None = None,
                 device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Images float32 [N, C, H, W] in [0, 1] and labels int64 [N], on ``device``."""
    info, reader = _lookup(name)
    if split not in SPLITS:
        raise MaarError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    images, labels = reader(split, Path(data_dir) if data_dir is not None else None)
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    pixels = pixels.reshape(len(pixels), *info.input_shape).float().div_(255.0)
    return pixels, torch.from_numpy(labels.astype(np.int64)).to(device)


def _lookup(name: str) -> tuple[DatasetInfo, Callable[[str, Path | None], tuple[np.ndarray, np.ndarray]]]:
    try:
        return _DATASETS[name]
    except KeyError:
        raise MaarError(f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}") from None


__all__ = ["DatasetInfo", "dataset_info", "list_datasets", "load_dataset"]
