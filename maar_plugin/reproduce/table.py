"""``maar report`` of a ``maar reproduce`` folder: per row, mean ± sample standard deviation over seeds,
and MAAR's effect over its base paired by seed, and by seed and image with intervals and tests
(``paired``); as Markdown and as a PNG chart."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from maar_plugin.certification import CERTIFICATE_NAME, PER_IMAGE_NAME, certificate_verifier, read_per_image
from maar_plugin.errors import MaarError
from maar_plugin.objectives import objective_class
from maar_plugin.objectives.maar import BUILT_IN_BASES, Maar
from maar_plugin.reproduce.paired import by_image_markdown, compare_by_image
from maar_plugin.reproduce.rows import Row, parse_row
from maar_plugin.reproduce.run import EVALUATION_NAME, read_plan

# (key, column title); accuracies in percent
METRICS = (("clean", "clean"), ("pgd", "PGD"), ("ibp_verified", "IBP-verified"),
           ("crown_verified", "CROWN-verified"), ("complete", "complete-certified"))


@dataclass
class RunResult:
    """One finished (or partly finished) run: accuracies, open instances, training time, hardware, who
    verified it completely (``maar`` or ``abcrown``) and on how many test images, and the per-image records
    where the files have them: ``clean_correct`` (per evaluated test image) and ``verdicts`` (per certified
    one)."""

    row: str
    seed: int
    metrics: dict[str, float] = field(default_factory=dict)
    open: int | None = None
    train_minutes: float | None = None
    hardware: str | None = None
    verifier: str | None = None
    retry_timeout: float | None = None
    certify_count: int | None = None
    clean_correct: np.ndarray | None = None
    verdicts: np.ndarray | None = None


@dataclass(frozen=True)
class Statistic:
    mean: float
    spread: float  # sample standard deviation (0 for one seed)
    n: int

    def __str__(self) -> str:
        return f"{self.mean:.2f} ± {self.spread:.2f}"


def statistic(values: list[float]) -> Statistic | None:
    if not values:
        return None
    mean = sum(values) / len(values)
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return Statistic(mean, math.sqrt(variance), len(values))


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_run(out_dir: Path, row: Row, seed: int) -> RunResult:
    name = row.run_name(seed)
    result = RunResult(row.label, seed)
    run_dir = out_dir / "runs" / name
    records = []
    if (run_dir / "metrics.jsonl").is_file():
        records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if records:
        result.train_minutes = sum(record.get("train_seconds", 0.0) for record in records) / 60
        config = _read_json(run_dir / "config.json") or {}
        result.hardware = records[-1].get("device_name") or config.get("device")
    evaluation = _read_json(run_dir / EVALUATION_NAME) or {}
    for key in ("clean", "pgd", "ibp_verified", "crown_verified"):
        if key in evaluation:
            result.metrics[key] = float(evaluation[key])
    if "misclassified" in evaluation:
        result.clean_correct = np.ones(int(evaluation["count"]), dtype=bool)
        result.clean_correct[np.asarray(evaluation["misclassified"], dtype=int)] = False
    certify_dir = out_dir / "certify" / name
    certificate = _read_json(certify_dir / CERTIFICATE_NAME)
    if certificate:
        result.metrics["complete"] = float(certificate["complete"])
        result.open = int(certificate["open"])
        result.verifier = certificate_verifier(certificate)
        result.retry_timeout = certificate.get("retry_timeout")
        result.certify_count = int(certificate["count"])
        if (certify_dir / PER_IMAGE_NAME).is_file():
            result.verdicts = np.array([image.verdict for image in read_per_image(certify_dir / PER_IMAGE_NAME)])
    return result


_FAMILIES = ("natural", "pgd", *BUILT_IN_BASES)


def table_order(labels: list[str]) -> list[str]:
    """natural, pgd, then each certified base followed by the MAAR rows over it, then the other families
    (third parties' bases with their MAAR rows) by name; rows with training options (``train_eps``) after
    their family's plain rows, each base still followed by the MAAR rows over it."""
    def key(label: str) -> tuple[int, str, str, int]:
        row, base = parse_row(label), maar_base(label)
        family = parse_row(base).objective if base else row.objective
        position = _FAMILIES.index(family) if family in _FAMILIES else len(_FAMILIES)
        return position, family if position == len(_FAMILIES) else "", row.training_suffix, int(base is not None)

    return sorted(labels, key=key)  # stable: plan order within a group


def collect_results(out_dir: str | Path, rows: list[str] | None = None) -> list[RunResult]:
    """Every (row, seed) run of the folder's plan (or only ``rows`` of it), rows in table order."""
    out_dir = Path(out_dir)
    plan = read_plan(out_dir)
    labels = list(plan.rows)
    if rows is not None:
        wanted = [parse_row(row).label for row in rows]
        missing = sorted(set(wanted) - set(labels))
        if missing:
            raise MaarError(f"{out_dir} has no row(s) {', '.join(missing)}; it has {', '.join(labels)}")
        labels = [label for label in labels if label in wanted]
    return [_read_run(out_dir, parse_row(label), seed) for label in table_order(labels) for seed in plan.seeds]


def maar_base(label: str) -> str | None:
    """The row a MAAR row is paired with: its base objective (``ibp``, ``sabr``, ...) with the same training
    options (``maar-sabr:train_eps=0.2`` → ``sabr:train_eps=0.2``); None for other rows."""
    row = parse_row(label)
    cls = objective_class(row.objective)
    if not issubclass(cls, Maar):
        return None
    return (cls.fixed_base or row.objective_args.get("base") or cls.Hyperparameters().base) + row.training_suffix


def _cell(stat: Statistic | None, seeds: int) -> str:
    """Mean ± std, with the number of seeds where fewer than the row's have this column yet."""
    if stat is None:
        return "–"
    return str(stat) if stat.n >= seeds else f"{stat} (n={stat.n})"


def summary_rows(results: list[RunResult]) -> list[dict]:
    """Per row: seeds, a Statistic per metric, total open instances, mean training minutes, hardware."""
    rows: dict[str, list[RunResult]] = {}
    for result in results:
        rows.setdefault(result.row, []).append(result)
    summaries = []
    for label, runs in rows.items():
        summary: dict[str, object] = {"row": label, "seeds": [run.seed for run in runs if run.metrics]}
        for key, _ in METRICS:
            summary[key] = statistic([run.metrics[key] for run in runs if key in run.metrics])
        opens = [run.open for run in runs if run.open is not None]
        summary["open"] = sum(opens) if opens else None
        summary["retry"] = _retry_timeouts(runs)
        summary["certify_counts"] = sorted({run.certify_count for run in runs if run.certify_count is not None})
        summary["train_minutes"] = statistic([run.train_minutes for run in runs if run.train_minutes is not None])
        summary["hardware"] = ", ".join(sorted({run.hardware for run in runs if run.hardware})) or "–"
        summaries.append(summary)
    return summaries


def maar_pairs(results: list[RunResult]) -> list[tuple[str, str]]:
    """(MAAR row, its base row) for every MAAR row whose base is among the results' rows."""
    labels = list(dict.fromkeys(result.row for result in results))
    return [(label, base) for label in labels if (base := maar_base(label)) is not None and base in labels]


def paired_effects(results: list[RunResult]) -> list[dict]:
    """MAAR row minus its base row, per metric, over the seeds both have (mean ± sample std of the differences),
    and the open instances of each side over the seeds where both were certified (``open``: row, base)."""
    by_key = {(result.row, result.seed): result for result in results}
    effects = []
    for label, base in maar_pairs(results):
        effect: dict[str, object] = {"row": label, "base": base}
        paired_open = [(by_key[(label, seed)].open, by_key[(base, seed)].open)
                       for row, seed in by_key if row == label and (base, seed) in by_key]
        both = [(row_open, base_open) for row_open, base_open in paired_open
                if row_open is not None and base_open is not None]
        effect["open"] = ((sum(row_open for row_open, _ in both), sum(base_open for _, base_open in both))
                          if both else None)
        for key, _ in METRICS:
            differences = [
                by_key[(label, seed)].metrics[key] - by_key[(base, seed)].metrics[key]
                for (row, seed) in by_key if row == label and (base, seed) in by_key
                and key in by_key[(label, seed)].metrics and key in by_key[(base, seed)].metrics
            ]
            effect[key] = statistic(differences)
        effects.append(effect)
    return effects


def _retry_timeouts(results: list[RunResult]) -> list[float]:
    """The distinct timeouts the runs' open instances were verified again with (from their certificates)."""
    return sorted({result.retry_timeout for result in results if result.retry_timeout})


def _retry_note(results: list[RunResult]) -> str:
    timeouts = _retry_timeouts(results)
    if not timeouts:
        return ""
    if len(timeouts) == 1:
        return f", open ones again with {timeouts[0]:g} s"
    return f", open ones again with {' or '.join(f'{t:g}' for t in timeouts)} s as the *open* column says"


def _certify_counts(results: list[RunResult], planned: int) -> str:
    """The numbers of test images the certificates cover: the plan's, or each where the runs differ."""
    counts = sorted({result.certify_count for result in results if result.certify_count is not None})
    if len(counts) <= 1:
        return str(counts[0] if counts else planned)
    return " or ".join(map(str, counts)) + " (the runs differ: the *open* column gives each row's)"


_VERIFIER_NAMES = {"builtin": "`maar verify`", "abcrown": "α,β-CROWN, `--verifier abcrown`"}


def markdown_report(out_dir: str | Path, rows: list[str] | None = None) -> str:
    """The results table (and MAAR's paired effect) of a ``maar reproduce`` folder (or of ``rows`` of it)
    as Markdown."""
    out_dir = Path(out_dir)
    plan = read_plan(out_dir)
    evaluation = plan.evaluation
    results = collect_results(out_dir, rows)
    verifiers = sorted({result.verifier for result in results if result.verifier})
    verifier = " and ".join(_VERIFIER_NAMES[name] for name in verifiers) or _VERIFIER_NAMES["builtin"]
    lines = [
        f"Recipe `{plan.recipe}` at {plan.scale} scale. Clean, PGD ({evaluation['pgd_steps']} steps, "
        f"{evaluation['pgd_restarts']} restarts) and IBP-verified accuracy on the first {evaluation['count']} test "
        f"images, CROWN-verified on the first {evaluation['crown_count']}, complete-certified ({verifier}, "
        f"{evaluation['certify_timeout']:g} s per instance{_retry_note(results)}) on the first "
        f"{_certify_counts(results, evaluation['certify_count'])}; "
        "mean ± sample standard deviation over seeds, in percent. *open*: instances left undecided (timeouts), "
        "summed over seeds; complete-certified is exact where it is 0.",
        "",
        "| objective | seeds | " + " | ".join(title for _, title in METRICS)
        + " | open | training min/run | hardware |",
        "|---" * (len(METRICS) + 5) + "|",
    ]
    for summary in summary_rows(results):
        seeds = ",".join(map(str, summary["seeds"])) or "–"
        cells = " | ".join(_cell(summary[key], len(summary["seeds"])) for key, _ in METRICS)
        minutes = "–" if summary["train_minutes"] is None else f"{summary['train_minutes'].mean:.1f}"
        open_count = "–" if summary["open"] is None else str(summary["open"])
        if len(_retry_timeouts(results)) > 1 and summary["retry"]:
            open_count += f" (again with {'/'.join(f'{t:g}' for t in summary['retry'])} s)"
        if summary["certify_counts"] and len({r.certify_count for r in results if r.certify_count}) > 1:
            open_count += f" (of {'/'.join(map(str, summary['certify_counts']))} images per seed)"
        lines.append(f"| {summary['row']} | {seeds} | {cells} | {open_count} | {minutes} | {summary['hardware']} |")
    effects = paired_effects(results)
    if effects:
        lines += ["", "MAAR minus its base, paired by seed (percentage points, mean ± sample std of the differences; "
                  "*open*: each side's open instances, summed over the seeds):", "",
                  "| MAAR row | base | " + " | ".join(title for _, title in METRICS) + " | open MAAR / base |",
                  "|---" * (len(METRICS) + 3) + "|"]
        for effect in effects:
            seed_count = max((effect[key].n for key, _ in METRICS if effect[key]), default=0)
            cells = " | ".join(_cell(effect[key], seed_count) for key, _ in METRICS)
            open_counts = "–" if effect["open"] is None else " / ".join(map(str, effect["open"]))
            lines.append(f"| {effect['row']} | {effect['base']} | {cells} | {open_counts} |")
        lines += by_image_markdown(compare_by_image(results, maar_pairs(results)))
    return "\n".join(lines) + "\n"


def plot_report(out_dir: str | Path, path: str | Path) -> None:
    """Grouped bars (one group per metric, one bar per row) with the seed spread as error bars, and a
    second panel with MAAR minus its base (paired by seed) where the folder has both."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from maar_plugin.atomic import atomic_write_with

    results = collect_results(out_dir)
    summaries, effects = summary_rows(results), paired_effects(results)
    plan = read_plan(out_dir)
    panels = [("accuracy (%)", summaries, f"{plan.recipe} ({plan.scale} scale), mean ± std over seeds")]
    if effects:
        panels.append(("MAAR − base (points)", effects, "MAAR minus its base, paired by seed"))
    width_inches = max(8.0, 1.6 * len(METRICS) * max(1, len(summaries)) / 3)
    figure, axes_list = plt.subplots(len(panels), 1, figsize=(width_inches, 4.5 * len(panels)), squeeze=False)
    for axes, (label, groups, title) in zip(axes_list[:, 0], panels):
        width = 0.8 / max(1, len(groups))
        for index, group in enumerate(groups):
            positions = [metric + (index - (len(groups) - 1) / 2) * width for metric in range(len(METRICS))]
            means = [group[key].mean if group[key] else 0.0 for key, _ in METRICS]
            spreads = [group[key].spread if group[key] else 0.0 for key, _ in METRICS]
            name = group["row"] if "base" not in group else f"{group['row']} − {group['base']}"
            axes.bar(positions, means, width, yerr=spreads, capsize=2, label=name)
        axes.set_xticks(range(len(METRICS)), [title for _, title in METRICS])
        axes.set_ylabel(label)
        axes.set_title(title)
        axes.axhline(0, color="black", linewidth=0.6)
        axes.legend(fontsize="small", ncols=2)
        axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    atomic_write_with(path, lambda handle: figure.savefig(handle, format="png", dpi=110))
    plt.close(figure)
