"""MAAR rows against their bases image by image: clean and complete-certified accuracy of the same test
images over the same seeds (``stats.paired_test``), as a section of ``maar report``.

Needs each run's per-image records: ``misclassified`` in ``evaluation.json`` and the certify folder's
``per_image.csv``. Folders written before these existed lack them; their rows are named, not compared.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from maar_plugin.reproduce.stats import LEVEL, RESAMPLES, PairedTest, paired_test

if TYPE_CHECKING:
    from maar_plugin.reproduce.table import RunResult


@dataclass(frozen=True)
class ImageComparison:
    """One MAAR row against its base: clean and complete-certified ``PairedTest`` (None without per-image
    records), each side's open instances over the compared images and seeds, and the runs of the pair
    that have results but no per-image records."""

    row: str
    base: str
    clean: PairedTest | None
    certified: PairedTest | None
    open_row: int = 0
    open_base: int = 0
    missing: tuple[str, ...] = ()

    def open_range(self) -> tuple[float, float]:
        """The certified difference whichever way the open instances are decided: from all of the base's
        proved and none of the row's, to the other way round (points). Needs ``certified``."""
        test = self.certified
        if test is None:
            raise ValueError(f"{self.row} over {self.base}: no per-image verdicts to compare")
        total = test.seeds * test.images
        return test.difference - 100.0 * self.open_base / total, test.difference + 100.0 * self.open_row / total


def _paired_arrays(row: dict[int, np.ndarray], base: dict[int, np.ndarray]
                   ) -> tuple[np.ndarray, np.ndarray] | None:
    """[seeds, images] arrays of the seeds both have, cut to the images all of them have (the first N)."""
    seeds = sorted(set(row) & set(base))
    if not seeds:
        return None
    images = min(min(len(row[seed]), len(base[seed])) for seed in seeds)
    return np.stack([row[seed][:images] for seed in seeds]), np.stack([base[seed][:images] for seed in seeds])


def compare_by_image(results: list[RunResult], pairs: list[tuple[str, str]], resamples: int = RESAMPLES
                     ) -> list[ImageComparison]:
    """An ImageComparison per (MAAR row, base row) of ``pairs``, over the seeds both rows have."""
    by_key = {(result.row, result.seed): result for result in results}
    comparisons = []
    for row, base in pairs:
        seeds = [seed for label, seed in by_key if label == row and (base, seed) in by_key]
        runs = {label: {seed: by_key[(label, seed)] for seed in seeds} for label in (row, base)}
        missing = tuple(f"{label} seed {seed}" for label in (row, base) for seed, run in runs[label].items()
                        if ("clean" in run.metrics and run.clean_correct is None)
                        or ("complete" in run.metrics and run.verdicts is None))
        clean = _paired_arrays(*({seed: run.clean_correct for seed, run in runs[label].items()
                                  if run.clean_correct is not None} for label in (row, base)))
        verdicts = _paired_arrays(*({seed: run.verdicts for seed, run in runs[label].items()
                                     if run.verdicts is not None} for label in (row, base)))
        certified, open_counts = None, (0, 0)
        if verdicts is not None:
            certified = paired_test(verdicts[0] == "unsat", verdicts[1] == "unsat", resamples)
            row_open, base_open = (int((~np.isin(side, ("sat", "unsat"))).sum()) for side in verdicts)
            open_counts = (row_open, base_open)
        comparisons.append(ImageComparison(row, base, None if clean is None else paired_test(*clean, resamples),
                                           certified, *open_counts, missing))
    return comparisons


def _difference(test: PairedTest | None) -> str:
    if test is None:
        return "–"
    text = f"{test.difference:+.2f} [{test.low:+.2f}, {test.high:+.2f}]"
    return f"**{text}**" if test.interval_excludes_zero else text


def _p_value(test: PairedTest | None) -> str:
    if test is None:
        return "–"
    text = f"{test.p_value:.3f}" if test.p_value >= 0.001 else f"{test.p_value:.1e}"
    return f"**{text}**" if test.test_rejects else text


def _images(test: PairedTest | None) -> str:
    return "–" if test is None else f"{test.seeds} × {test.images}"


def _significance_lines(comparisons: list[ImageComparison]) -> list[str]:
    """Which differences are significant, by both criteria and by one only."""
    both: list[str] = []
    one: list[str] = []
    for comparison in comparisons:
        for name, test in (("clean", comparison.clean), ("complete-certified", comparison.certified)):
            if test is None or not (test.interval_excludes_zero or test.test_rejects):
                continue
            text = (f"{comparison.row} over {comparison.base}, {name} {test.difference:+.2f} points "
                    f"(p = {test.p_value:.2g})")
            (both if test.interval_excludes_zero and test.test_rejects else one).append(text)
    if not both and not one:
        return ["No difference is significant: every interval contains 0 and every p ≥ 0.05."]
    lines = []
    if both:
        lines.append("Significant by both criteria (interval excludes 0, p < 0.05): " + "; ".join(both) + ".")
    if one:
        lines.append("By one criterion only: " + "; ".join(one) + ".")
    return lines


def by_image_markdown(comparisons: list[ImageComparison]) -> list[str]:
    """The report's section on MAAR minus its base paired by seed and image (no lines without pairs)."""
    if not comparisons:
        return []
    compared = [comparison for comparison in comparisons if comparison.clean or comparison.certified]
    lines = ["", "MAAR minus its base, paired by seed and image: not available."]
    if compared:
        lines = ["", f"MAAR minus its base, paired by seed and image (percentage points). Δ: mean over seeds of the "
                 f"accuracy difference on the same images, with a {LEVEL:.0%} interval from a paired bootstrap "
                 f"({RESAMPLES:,} resamples of the seeds and, within each, of the images); *seeds × images*: what "
                 "is compared; b / c: images only the MAAR row / only the base classifies correctly (clean) or "
                 "certifies, summed over seeds; p: McNemar's exact two-sided test on b and c. Open instances count "
                 "as not certified, so each complete-certified accuracy is a lower bound: *open* gives each side's "
                 "count and *Δ if open decided* the range the difference takes whichever way they are decided. "
                 "**Bold**: the interval excludes 0, or p < 0.05.", "",
                 "| MAAR row | base | clean: seeds × images | Δ clean | b / c | p | certified: seeds × images | "
                 "Δ complete-certified | b / c | p | open MAAR / base | Δ if open decided |",
                 "|---" * 12 + "|"]
        for comparison in compared:
            clean, certified = comparison.clean, comparison.certified
            if certified is None:
                certified_cells = "– | – | – | – | – | –"
            else:
                low, high = comparison.open_range()
                certified_cells = (f"{_images(certified)} | {_difference(certified)} | {certified.b} / {certified.c} | "
                                   f"{_p_value(certified)} | {comparison.open_row} / {comparison.open_base} | "
                                   f"[{low:+.2f}, {high:+.2f}]")
            clean_cells = "– | – | – | –" if clean is None else \
                f"{_images(clean)} | {_difference(clean)} | {clean.b} / {clean.c} | {_p_value(clean)}"
            lines.append(f"| {comparison.row} | {comparison.base} | {clean_cells} | {certified_cells} |")
        lines += ["", *_significance_lines(compared)]
    missing = [run for comparison in comparisons for run in comparison.missing]
    if missing:
        lines += ["", f"Without per-image records ({', '.join(dict.fromkeys(missing))}): "
                  "their evaluation.json has no `misclassified` list or their certify folder no per_image.csv "
                  "(written by an earlier maar-plugin), so they are left out of this comparison"
                  + ("" if compared else ", and only the per-seed statistics above are given")
                  + ". `maar reproduce` with the same arguments on the full folder (checkpoints and verification "
                  "logs) adds the records without training or verifying again."]
    return lines
