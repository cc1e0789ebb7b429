"""Tables of a verification run: per stage how many instances it proved, falsified or left open."""
from __future__ import annotations

import statistics
from collections.abc import Set as AbstractSet

from maar_plugin.verification.result import ABCROWN_STAGE, STAGES, VERDICTS, InstanceResult, certified_by


def _time_columns(values: list[float]) -> list[str]:
    if not values:
        return ["-", "-", "-"]
    return [f"{statistics.fmean(values):.3f}", f"{statistics.median(values):.3f}", f"{max(values):.3f}"]


def _format(rows: list[list[str]], left: AbstractSet[int] = frozenset({0})) -> str:
    """Aligned columns; those in ``left`` flush left, the others (numbers) flush right."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join((cell.ljust(w) if i in left else cell.rjust(w)) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _reported_stages(results: list[InstanceResult]) -> tuple[str, ...]:
    """The cascade's stages, α,β-CROWN's, or both: those of the verifiers that produced ``results``."""
    by_abcrown = any(ABCROWN_STAGE in r.stage_verdicts for r in results)
    by_cascade = any(stage in r.stage_verdicts for r in results for stage in STAGES) or not by_abcrown
    return (STAGES if by_cascade else ()) + ((ABCROWN_STAGE,) if by_abcrown else ())


def stage_table(results: list[InstanceResult]) -> str:
    """Per stage: instances it ran on, proved, falsified, left open, cumulative proved, seconds per instance."""
    rows = [["stage", "ran", "proved", "falsified", "open", "proved<=stage", "mean s", "median s", "max s"]]
    for stage in _reported_stages(results):
        ran = [r for r in results if stage in r.stage_verdicts]
        decided = [r for r in ran if r.stage == stage]
        rows.append([stage, str(len(ran)),
                     str(sum(r.verdict == "unsat" for r in decided)), str(sum(r.verdict == "sat" for r in decided)),
                     str(sum(r.stage_verdicts[stage] == "open" for r in ran)), str(certified_by(results, stage)),
                     *_time_columns([r.stage_seconds[stage] for r in ran if stage in r.stage_seconds])])
    rows.append(["total", str(len(results)), str(sum(r.verdict == "unsat" for r in results)),
                 str(sum(r.verdict == "sat" for r in results)),
                 str(sum(r.verdict not in ("unsat", "sat") for r in results)), "",
                 *_time_columns([r.seconds for r in results])])
    verdicts = "  ".join(f"{v}: {sum(r.verdict == v for r in results)}" for v in VERDICTS)
    unstable = [r.unstable_relus for r in results if r.unstable_relus is not None]
    footer = f"verdicts  {verdicts}"
    if unstable:
        footer += f"\nunstable ReLUs per instance: mean {statistics.fmean(unstable):.1f}, max {max(unstable)}"
    return _format(rows) + "\n" + footer


def instance_table(results: list[InstanceResult]) -> str:
    """One line per instance: verdict, deciding stage, seconds, unstable ReLUs, the bracket of its margin (for
    an instance left open: how far from decided), message."""
    rows = [["instance", "verdict", "stage", "seconds", "unstable", "margin", "message"]]
    for r in results:
        rows.append([r.instance, r.verdict, r.stage or "-", f"{r.seconds:.3f}",
                     "-" if r.unstable_relus is None else str(r.unstable_relus), margin_text(r), r.message[:80]])
    return _format(rows, left={0, 1, 2, 5, 6})


def margin_text(result: InstanceResult) -> str:
    """``[lower, upper]`` of the instance's margin, ``?`` for an end not known."""
    if result.margin_lower is None and result.margin_upper is None:
        return "-"
    ends = ["?" if value is None else f"{value:.3g}" for value in (result.margin_lower, result.margin_upper)]
    return f"[{ends[0]}, {ends[1]}]"
