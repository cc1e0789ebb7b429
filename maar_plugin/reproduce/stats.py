"""Paired comparison of two training objectives on the same test images over the same seeds: the accuracy
difference with a bootstrap interval over seeds and images, and McNemar's exact test on the discordant images.

Inputs are boolean arrays ``[seeds, images]`` (image i of seed s right, i.e. classified correctly or certified),
one per objective, row s of both from the same seed and column i from the same test image.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from maar_plugin.errors import MaarError

RESAMPLES = 10_000
LEVEL = 0.95


@dataclass(frozen=True)
class PairedTest:
    """Treated minus base accuracy in percentage points: ``difference`` (mean over seeds), its bootstrap
    interval [``low``, ``high``], the discordant images summed over seeds (``b``: only treated right,
    ``c``: only base right) and McNemar's exact two-sided ``p_value`` on them."""

    difference: float
    low: float
    high: float
    b: int
    c: int
    p_value: float
    seeds: int
    images: int

    @property
    def interval_excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    @property
    def test_rejects(self) -> bool:
        """McNemar's test rejects equal accuracy at the 5 % level."""
        return self.p_value < 1 - LEVEL


def mcnemar_exact(b: int, c: int) -> float:
    """McNemar's exact two-sided p-value: 2 P(X ≤ min(b, c)) for X ~ Binomial(b + c, 1/2), at most 1.

    Under equal accuracy each discordant image is as likely to favour either side; exact integer
    arithmetic, so large counts lose nothing."""
    if b < 0 or c < 0:
        raise MaarError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)


def _check_pair(treated: np.ndarray, base: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    treated, base = np.asarray(treated, dtype=bool), np.asarray(base, dtype=bool)
    if treated.ndim != 2 or treated.shape != base.shape or 0 in treated.shape:
        raise MaarError(f"paired results must be two non-empty [seeds, images] arrays of one shape, got "
                        f"{treated.shape} and {base.shape}")
    return treated, base


def bootstrap_interval(treated: np.ndarray, base: np.ndarray, resamples: int = RESAMPLES, seed: int = 0,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the accuracy difference (points) under a two-level paired bootstrap: draw the
    seeds with replacement, then, within each drawn seed, its images with replacement (the same draw for
    both objectives, which keeps the pairing).

    Only the images where the two differ move the difference, so drawing N images of a seed amounts to
    one multinomial draw of how many of them favour the treated side, the base, or neither: exact, and
    independent of N in time (10,000 resamples take milliseconds)."""
    treated, base = _check_pair(treated, base)
    seeds, images = treated.shape
    favour = np.stack([(treated & ~base).sum(axis=1), (base & ~treated).sum(axis=1)], axis=1) / images
    probabilities = np.concatenate([favour, 1 - favour.sum(axis=1, keepdims=True)], axis=1).clip(0, 1)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, seeds, size=(resamples, seeds))
    counts = rng.multinomial(images, probabilities[drawn])           # [resamples, seeds, 3]
    differences = 100.0 * (counts[..., 0] - counts[..., 1]).mean(axis=1) / images
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(differences, [tail, 100 - tail])
    return float(low), float(high)


def paired_test(treated: np.ndarray, base: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> PairedTest:
    """The difference, its bootstrap interval and McNemar's test pooled over seeds (see the module)."""
    treated, base = _check_pair(treated, base)
    b, c = int((treated & ~base).sum()), int((base & ~treated).sum())
    difference = 100.0 * (treated.mean(axis=1) - base.mean(axis=1)).mean()
    low, high = bootstrap_interval(treated, base, resamples, seed)
    return PairedTest(float(difference), low, high, b, c, mcnemar_exact(b, c), *treated.shape)
