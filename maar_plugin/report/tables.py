"""Tables over several sources: verdict counts per source, and the instances side by side."""
from __future__ import annotations

import statistics
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from maar_plugin.report.cactus import DECIDED
from maar_plugin.report.sources import ResultSource
from maar_plugin.verification import InstanceResult, instance_table, stage_table

VERDICT_COLUMNS = ("unsat", "sat", "timeout", "unknown", "error")


@dataclass(frozen=True)
class AlignedRow:
    """One instance across the sources (None where a source lacks it)."""

    instance: str
    results: tuple[InstanceResult | None, ...]

    @property
    def contradiction(self) -> bool:
        """One source says sat and another unsat: at least one of them is wrong."""
        verdicts = {r.verdict for r in self.results if r is not None}
        return set(DECIDED) <= verdicts


def aligned_rows(sources: list[ResultSource]) -> list[AlignedRow]:
    """Every instance of any source, in the order first seen, with each source's result."""
    by_source = [{r.instance: r for r in source.results} for source in sources]
    names = list(dict.fromkeys(r.instance for source in sources for r in source.results))
    return [AlignedRow(name, tuple(results.get(name) for results in by_source)) for name in names]


def verdict_counts(results: list[InstanceResult]) -> dict[str, int]:
    """Instances per verdict of VERDICT_COLUMNS, plus ``other`` (e.g. ``killed`` in a comparison)."""
    counts = {verdict: sum(r.verdict == verdict for r in results) for verdict in VERDICT_COLUMNS}
    counts["other"] = len(results) - sum(counts.values())
    return counts


def summary_rows(sources: list[ResultSource]) -> list[list[str]]:
    """Header and one row per source: instances, decided, verdict counts, median and total seconds."""
    rows = [["source", "instances", "decided", *VERDICT_COLUMNS, "other", "median s (decided)", "total s"]]
    for source in sources:
        counts = verdict_counts(source.results)
        decided = [r.seconds for r in source.results if r.verdict in DECIDED]
        rows.append([source.label, str(len(source.results)), str(len(decided)),
                     *(str(counts[key]) for key in (*VERDICT_COLUMNS, "other")),
                     f"{statistics.median(decided):.3f}" if decided else "-",
                     f"{sum(r.seconds for r in source.results):.1f}"])
    return rows


def format_rows(rows: list[list[str]], left: AbstractSet[int] = frozenset({0})) -> str:
    """Aligned text columns under a dashed line; columns in ``left`` flush left, the others right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join((cell.ljust(w) if i in left else cell.rjust(w)) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def summary_table(sources: list[ResultSource]) -> str:
    """Verdict counts per source and the number of sat-vs-unsat contradictions between them."""
    contradictions = [row.instance for row in aligned_rows(sources) if row.contradiction]
    text = format_rows(summary_rows(sources))
    if len(sources) > 1:
        text += f"\ncontradictions (sat vs unsat): {len(contradictions)}"
        text += f" ({', '.join(contradictions)})" if contradictions else ""
    return text


def side_by_side_table(sources: list[ResultSource]) -> str:
    """One line per instance: each source's verdict (with its deciding stage) and seconds."""
    header = ["instance"] + [cell for source in sources for cell in (source.label, "s")] + [""]
    rows = [header]
    for row in aligned_rows(sources):
        cells = [row.instance]
        for result in row.results:
            verdict = "-" if result is None else result.verdict + (f" ({result.stage})" if result.stage else "")
            cells += [verdict, "-" if result is None else f"{result.seconds:.3f}"]
        rows.append([*cells, "CONTRADICTION" if row.contradiction else ""])
    return format_rows(rows, left={0, len(header) - 1, *range(1, len(header) - 1, 2)})


def text_report(sources: list[ResultSource], per_instance: bool = False) -> str:
    """What ``maar report`` prints. One source: its per-instance table (if asked) and its stage table, as for
    a single ``maar verify`` folder; several: the side-by-side table (if asked), the stage table of each source
    that ran our cascade, and the verdict counts per source with the contradictions."""
    if len(sources) == 1:
        results = sources[0].results
        return "\n\n".join(([instance_table(results)] if per_instance else []) + [stage_table(results)])
    parts = [side_by_side_table(sources)] if per_instance else []
    parts += [f"{source.label}:\n{stage_table(source.results)}" for source in sources if source.has_stages]
    parts.append(summary_table(sources))
    return "\n\n".join(parts)
