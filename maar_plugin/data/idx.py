"""Reading the IDX files MNIST ships in (gzip-compressed or raw), with magic numbers and sizes checked."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from maar_plugin.errors import MaarError

_UNSIGNED_BYTE = 0x08


def read_idx_bytes(path: Path) -> bytes:
    """The file's uncompressed bytes: gunzipped when the name ends in ``.gz``."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as stream:
                return stream.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise MaarError(f"{path}: cannot read IDX file ({error})") from None


def parse_idx(raw: bytes, ndim: int, source: Path) -> np.ndarray:
    """A uint8 IDX array of ``ndim`` dimensions (images 3, labels 1), checking the header against the size."""
    if len(raw) < 4 + 4 * ndim:
        raise MaarError(f"{source}: too short for an IDX header")
    zero, dtype_code, found_ndim = raw[0] * 256 + raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != _UNSIGNED_BYTE or found_ndim != ndim:
        raise MaarError(f"{source}: bad IDX magic number {raw[:4].hex()} "
                        f"(expected 0000{_UNSIGNED_BYTE:02x}{ndim:02x}: uint8 with {ndim} dimension(s))")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = 4 + 4 * ndim + int(np.prod(shape))
    if len(raw) != expected:
        raise MaarError(f"{source}: IDX header says shape {shape} ({expected} bytes) but the file has {len(raw)} bytes")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape).copy()
