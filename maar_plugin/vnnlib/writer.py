"""Write local-robustness properties as VNN-LIB files in the format VNN-COMP benchmarks use."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from maar_plugin.atomic import atomic_write_text

ROBUSTNESS_DESCRIPTION = "local robustness; the file is sat iff some input in the box is not classified as label"


def robustness_box(image: np.ndarray, eps: float,
                   domain: tuple[float, float] | None = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """The L-inf ε-ball around ``image`` clipped to ``domain`` (None: not clipped), flat, as float32 rounded
    *outwards*.

    The ball is computed in float64 and each bound rounded to the float32 below (lower) or above
    (upper), so the written box contains the exact ball and every bound is a float32 value that a
    verifier reading float32 gets exactly. (α,β-CROWN's reader recomputes each bound as centre ±
    half-width in float64, which is exact for float32 bounds: it sees exactly this box.)
    """
    pixels = np.asarray(image, dtype=np.float64).reshape(-1)
    lower, upper = pixels - eps, pixels + eps
    if domain is not None:
        lower, upper = np.clip(lower, *domain), np.clip(upper, *domain)
    return float32_outward(lower, upper)


def float32_outward(lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The smallest float32 box that contains the float64 box [lower, upper]."""
    lower, upper = np.asarray(lower, dtype=np.float64), np.asarray(upper, dtype=np.float64)
    lower32, upper32 = lower.astype(np.float32), upper.astype(np.float32)
    lower32 = np.where(lower32 > lower, np.nextafter(lower32, np.float32(-np.inf)), lower32)
    upper32 = np.where(upper32 < upper, np.nextafter(upper32, np.float32(np.inf)), upper32)
    return lower32, upper32


def robustness_vnnlib_text(image: np.ndarray, label: int, eps: float, num_classes: int,
                           comments: dict[str, str]) -> str:
    """The VNN-LIB text of the negated robustness property of ``image`` (see write_robustness_vnnlib)."""
    if not 0 <= label < num_classes:
        raise ValueError(f"label {label} outside 0..{num_classes - 1}")
    lower, upper = robustness_box(image, eps)
    header = {"property": ROBUSTNESS_DESCRIPTION, "label": str(label), "eps": repr(float(eps)), **comments}
    lines = [f"; {_one_line(key)}: {_one_line(value)}" for key, value in header.items()]
    lines.append("")
    lines += [f"(declare-const X_{i} Real)" for i in range(lower.shape[0])]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(num_classes)]
    lines += ["", "; input box: eps-ball around the image, clipped to [0, 1]"]
    for i, (low, high) in enumerate(zip(lower.tolist(), upper.tolist())):
        lines.append(f"(assert (>= X_{i} {low!r}))")
        lines.append(f"(assert (<= X_{i} {high!r}))")
    lines += ["", f"; unsafe outputs: some class j != {label} scores at least as high as class {label}", "(assert (or"]
    lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(num_classes) if j != label]
    lines += ["))", ""]
    return "\n".join(lines)


def write_robustness_vnnlib(path: str | Path, image: np.ndarray, label: int, eps: float, num_classes: int,
                            comments: dict[str, str]) -> None:
    """Write the negated L-inf robustness property of one image to ``path`` (atomically).

    Inputs ``X_0..X_{n-1}`` are the image in the flat (C-order) layout of the ONNX input
    ``[1, C, H, W]``; outputs ``Y_0..Y_{K-1}`` are the logits. The file asserts the counterexample
    region ``OR_{j != label} Y_j >= Y_label``, so a verifier answers ``unsat`` when the image is
    robust. ``comments`` (e.g. image index, dataset) go into the header as ``; key: value`` lines.
    """
    atomic_write_text(path, robustness_vnnlib_text(image, label, eps, num_classes, comments))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
