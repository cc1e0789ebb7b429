"""CIFAR-10 from the ``cifar-10-batches-py`` files, read without unrestricted unpickling.

The batch files are pickled dicts of bytes, lists and one numpy array. ``pickle.load`` would run
any callable a file names; ``_ArrayOnlyUnpickler`` resolves only the three numpy names an array
needs, so a tampered file fails to load instead of running code.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from maar_plugin.errors import MaarError

_RECONSTRUCT = np.zeros(0).__reduce__()[0]  # the function numpy unpickles arrays with (a private name)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}
_SPLIT_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
_BATCHES_DIR = "cifar-10-batches-py"


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global."""

    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch") from None


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N] of one batch file."""
    try:
        with path.open("rb") as stream:
            batch = _ArrayOnlyUnpickler(stream, encoding="bytes").load()
    except OSError as error:
        raise MaarError(f"{path}: cannot read CIFAR-10 batch ({error})") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as error:
        raise MaarError(f"{path}: not a CIFAR-10 batch file ({error})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise MaarError(f"{path}: not a CIFAR-10 batch file (expected a dict with b'data' and b'labels')")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise MaarError(f"{path}: b'data' must be a uint8 array [N, 3072]")
    if labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer):
        raise MaarError(f"{path}: b'labels' must hold {len(data)} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise MaarError(f"{path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 3, 32, 32] and labels int64 [N]; ``data_dir`` holds the batch files or
    the ``cifar-10-batches-py`` folder."""
    if data_dir is None:
        raise MaarError("CIFAR-10 needs --data-dir: a directory with the cifar-10-batches-py files "
                        "(data_batch_1..5, test_batch)")
    directory = data_dir / _BATCHES_DIR if (data_dir / _BATCHES_DIR).is_dir() else data_dir
    paths = [directory / name for name in _SPLIT_FILES[split]]
    missing = [path.name for path in paths if not path.is_file()]
    if missing:
        raise MaarError(f"CIFAR-10 file(s) {', '.join(missing)} not found in {directory}; pass --data-dir with "
                        "the cifar-10-batches-py files (data_batch_1..5, test_batch)")
    batches = [read_cifar_batch(path) for path in paths]
    return np.concatenate([images for images, _ in batches]), np.concatenate([labels for _, labels in batches])
