"""Assemble a report of result sources: the cactus plot, the stage funnel, the counterexample figures."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from maar_plugin.atomic import atomic_write_bytes
from maar_plugin.errors import MaarError
from maar_plugin.report.cactus import cactus_line, plot_cactus
from maar_plugin.report.counterexamples import OnnxClassifier, counterexample_view, plot_counterexample
from maar_plugin.report.funnel import plot_funnel, stage_funnel
from maar_plugin.report.sources import ResultSource

DEFAULT_MAX_COUNTEREXAMPLES = 12


@dataclass(frozen=True)
class Figure:
    """A rendered figure: its file name in the report folder, PNG bytes, and a caption."""

    name: str
    png: bytes
    caption: str


@dataclass
class Report:
    sources: list[ResultSource]
    cactus: Figure
    funnel: Figure | None
    counterexamples: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "source"


def common_timeout(sources: list[ResultSource]) -> float | None:
    """The time limit of every instance, if they all had the same one."""
    timeouts = {r.timeout for source in sources for r in source.results}
    return timeouts.pop() if len(timeouts) == 1 else None


def _classifier(path: str, cache: dict[str, OnnxClassifier | MaarError]) -> OnnxClassifier:
    """The model at ``path``, loaded once (also a failure to load it is remembered)."""
    if path not in cache:
        try:
            cache[path] = OnnxClassifier(path)
        except MaarError as error:
            cache[path] = error
    cached = cache[path]
    if isinstance(cached, MaarError):
        raise cached
    return cached


def counterexample_figures(sources: list[ResultSource], limit: int = DEFAULT_MAX_COUNTEREXAMPLES
                           ) -> tuple[list[Figure], list[str]]:
    """Figures of the first ``limit`` counterexamples per source on image inputs, and notes on those left
    out (non-image inputs, files not found, over the limit)."""
    figures, notes = [], []
    classifiers: dict[str, OnnxClassifier | MaarError] = {}
    for source in sources:
        found = [r for r in source.results if r.verdict == "sat"]
        drawn, unreadable, non_image, over_limit = 0, 0, 0, 0
        failures: dict[str, int] = {}  # error message -> sat instances it kept from being drawn
        for result in found:
            if result.counterexample is None:
                unreadable += 1
                continue
            if drawn >= limit:
                over_limit += 1
                continue
            try:
                view = counterexample_view(result, _classifier(result.onnx, classifiers))
            except MaarError as error:
                failures[str(error)] = failures.get(str(error), 0) + 1
                continue
            if view is None:
                non_image += 1
                continue
            prefix = "" if len(sources) == 1 else _file_safe(source.label) + "-"
            target = "?" if view.target is None else view.target
            caption = (f"{source.label}: {result.instance} — target {target}, clean predicted "
                       f"{view.clean_prediction}, adversarial predicted {view.adversarial_prediction}")
            figures.append(Figure(f"cex-{prefix}{_file_safe(result.instance)}.png",
                                  plot_counterexample(view, f"{source.label}: {result.instance}"), caption))
            drawn += 1
        for count, reason in ((unreadable, "no result file with an X/Y assignment"),
                              (non_image, "inputs that are not images"),
                              (over_limit, f"over the limit of {limit} figures per source"),
                              *((count, message) for message, count in failures.items())):
            if count:
                notes.append(f"{source.label}: {count} sat instances not drawn: {reason}")
    return figures, notes


def build_report(sources: list[ResultSource], max_counterexamples: int = DEFAULT_MAX_COUNTEREXAMPLES) -> Report:
    """Render every figure of ``sources``; the funnel covers the sources that record our cascade's stages."""
    if not sources:
        raise MaarError("no result folders to report on")
    lines = [cactus_line(source.label, source.results) for source in sources]
    cactus = Figure("cactus.png", plot_cactus(lines, common_timeout(sources)),
                    "Instances decided (sat + unsat) against the time each took, sorted per verifier.")
    staged = [(source.label, stage_funnel(source.results)) for source in sources if source.has_stages]
    funnel = Figure("funnel.png", plot_funnel(staged),
                    "Per stage of the cascade: instances that entered it, and those it proved or falsified."
                    ) if staged else None
    figures, notes = counterexample_figures(sources, max_counterexamples)
    return Report(sources, cactus, funnel, figures, notes)


def write_figures(report: Report, out_dir: str | Path) -> list[Path]:
    """Write every figure of ``report`` as a PNG file in ``out_dir``; the paths written."""
    paths = []
    for figure in [report.cactus, report.funnel, *report.counterexamples]:
        if figure is not None:
            path = Path(out_dir) / figure.name
            atomic_write_bytes(path, figure.png)
            paths.append(path)
    return paths
