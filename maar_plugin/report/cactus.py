"""Cactus plot, as VNN-COMP compares verifiers: instances decided (x) against the time each took (y).

Each verifier's decided instances (``sat`` or ``unsat``) are sorted by time; the k-th point is the k-th
fastest, so a line further right decides more and a lower line decides faster. Time is per instance (not
cumulative), on a log scale.
"""
from __future__ import annotations

from dataclasses import dataclass

from maar_plugin.report.figures import png_bytes, pyplot
from maar_plugin.verification import InstanceResult

DECIDED = ("sat", "unsat")
MIN_SECONDS = 1e-3  # times below this sit on the floor of the log scale


@dataclass(frozen=True)
class CactusLine:
    """One verifier's line: sorted seconds of its decided instances, out of ``total`` instances."""

    label: str
    times: tuple[float, ...]
    total: int

    @property
    def counts(self) -> tuple[int, ...]:
        """x of each point: 1, 2, ... (the k-th fastest decided instance)."""
        return tuple(range(1, len(self.times) + 1))


def cactus_line(label: str, results: list[InstanceResult]) -> CactusLine:
    """The cactus line of ``results``: the per-instance seconds of those decided, ascending."""
    return CactusLine(label, tuple(sorted(r.seconds for r in results if r.verdict in DECIDED)), len(results))


def plot_cactus(lines: list[CactusLine], timeout: float | None = None) -> bytes:
    """PNG of the cactus plot, one line per verifier (legend: name, decided / instances); ``timeout``, if
    every instance had the same, as a dashed horizontal line."""
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(7.5, 4.5))
    for line in lines:
        times = [max(t, MIN_SECONDS) for t in line.times]
        axes.plot(line.counts, times, marker="o", markersize=3, linewidth=1.5,
                  label=f"{line.label} ({len(line.times)}/{line.total} decided)")
    if timeout:
        axes.axhline(timeout, color="grey", linestyle="--", linewidth=1, label=f"timeout {timeout:g} s")
    axes.set_yscale("log")
    axes.set_xlabel("instances decided (sat + unsat)")
    axes.set_ylabel("time per instance (s, sorted)")
    axes.set_xlim(0, max([line.total for line in lines] + [1]) + 0.5)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title("Cactus plot: the k-th fastest decided instance")
    axes.grid(True, which="both", alpha=0.3)
    if lines or timeout:
        axes.legend(fontsize="small", loc="upper left")
    figure.tight_layout()
    return png_bytes(figure)
