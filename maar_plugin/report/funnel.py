"""Stage funnel of our cascade: per stage, the instances that entered it and those it decided.

Stages come from :data:`maar_plugin.verification.STAGES` in cascade order; a stage no instance reached is
left out. An instance that enters a stage and is not decided there goes on to a later stage (or runs out
of time in it).
"""
from __future__ import annotations

from dataclasses import dataclass

from maar_plugin.report.figures import png_bytes, pyplot
from maar_plugin.verification import STAGES, InstanceResult


@dataclass(frozen=True)
class FunnelStage:
    """One stage: instances that entered it, proved there (unsat), falsified there (sat)."""

    stage: str
    entered: int
    proved: int
    falsified: int

    @property
    def passed_on(self) -> int:
        """Entered but not decided here: left to the next stage or open at the end."""
        return self.entered - self.proved - self.falsified


def stage_funnel(results: list[InstanceResult]) -> list[FunnelStage]:
    """The funnel of ``results`` over the cascade's stages that at least one instance entered."""
    funnel = []
    for stage in STAGES:
        entered = [r for r in results if stage in r.stage_verdicts]
        if entered:
            decided = [r for r in entered if r.stage == stage]
            funnel.append(FunnelStage(stage, len(entered), sum(r.verdict == "unsat" for r in decided),
                                      sum(r.verdict == "sat" for r in decided)))
    return funnel


def plot_funnel(funnels: list[tuple[str, list[FunnelStage]]]) -> bytes:
    """PNG of one horizontal funnel per (label, stages), side by side on the same rows (every stage any of them
    ran): a grey bar per stage for the instances that entered it, green and orange inside it for those proved
    and falsified there."""
    plt = pyplot()
    names = [stage for stage in STAGES if any(s.stage == stage for _, stages in funnels for s in stages)]
    funnels = [(label, [next((s for s in stages if s.stage == name), FunnelStage(name, 0, 0, 0)) for name in names])
               for label, stages in funnels]
    rows = max(len(names), 1)
    figure, axes_row = plt.subplots(1, max(1, len(funnels)), figsize=(5.5 * max(1, len(funnels)), 0.55 * rows + 1.6),
                                    squeeze=False)
    for axes, (label, stages) in zip(axes_row[0], funnels):
        positions = list(range(len(stages)))
        entered = [s.entered for s in stages]
        proved = [s.proved for s in stages]
        falsified = [s.falsified for s in stages]
        axes.barh(positions, entered, color="#d0d0d0", label="entered")
        axes.barh(positions, proved, color="#2e8b57", label="proved (unsat)")
        axes.barh(positions, falsified, left=proved, color="#e07b24", label="falsified (sat)")
        for position, stage in zip(positions, stages):
            axes.text(stage.entered, position, f" {stage.entered} in: {stage.proved} proved, {stage.falsified} "
                      f"falsified", va="center", fontsize="small")
        axes.set_yticks(positions, [s.stage for s in stages])
        axes.invert_yaxis()
        axes.set_xlim(0, max([*entered, 1]) * 1.9)
        axes.set_xlabel("instances")
        axes.set_title(label)
        axes.legend(fontsize="x-small", loc="lower right")
    figure.suptitle("Stage funnel: instances entering each stage and decided there")
    figure.tight_layout()
    return png_bytes(figure)
