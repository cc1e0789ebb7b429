"""MAAR's best setting, chosen on held-out training images rather than on the test set.

A small grid of MAAR settings (λ, weighting, kl_region, pairwise_bounds) over a base, with the base itself,
each trained with a recipe (default: mnist-eps0.1 on dm-small at CPU scale, as ``maar reproduce``
trains its rows) and the same seeds, scored on the validation images (the last 5,000 training images,
which a recipe's runs never see; ``maar evaluate --split validation``) by CROWN-verified accuracy (cheap,
and the best cheap predictor of complete-certified accuracy) and clean accuracy. It ranks the settings,
and compares each with its base seed by seed (mean ± std of the differences) and image by image (the
bootstrap interval and McNemar's test of ``maar report``).

Results go to ``--out`` as small files: ``search.json`` (the settings), ``runs/<row>-s<seed>/``
(``config.json``, ``metrics.jsonl`` and ``validation.json``: accuracies and per-image records),
``runs.csv``, ``ranking.csv`` and ``ranking.md``. Checkpoints stay in ``--work``. Rerunning the same
command skips finished runs and resumes an interrupted training.

    python benchmarks/maar_search.py --out benchmarks/results/maar-search-mnist-eps0.1 --work results/maar-search
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from maar_plugin.atomic import atomic_write_text
from maar_plugin.data import dataset_info
from maar_plugin.devices import describe_device
from maar_plugin.errors import MaarError
from maar_plugin.reproduce.rows import Row, parse_rows, parse_seeds
from maar_plugin.reproduce.run import run_config
from maar_plugin.reproduce.stats import PairedTest, paired_test
from maar_plugin.reproduce.table import Statistic, maar_base, statistic
from maar_plugin.training.config import TrainConfig, build_config
from maar_plugin.training.evaluate import crown_verified, evaluate_robustness
from maar_plugin.training.evaluate_run import VALIDATION_COUNT, evaluation_images, misclassified_indices
from maar_plugin.training.loop import train
from maar_plugin.training.recipe import Recipe, load_recipe
from maar_plugin.training.run_files import CONFIG_NAME, load_trained_model, training_state

# The grid, in the order it runs: SABR and MTL-IBP (the strongest bases at MNIST ε = 0.1, CPU scale) with
# the recipes' MAAR over each (λ = 0.5, soft), then MAAR over SABR with other λ, weighting and kl_region.
# pairwise_bounds=base is left out: SABR's and MTL-IBP's bounds are IBP's, so it trains the very network of
# pairwise_bounds=ibp.
DEFAULT_GRID = (
    "sabr",
    "maar-sabr:weighting=soft",
    "mtl-ibp",
    "maar-mtl-ibp:weighting=soft",
    "maar-sabr:lam=1:weighting=soft",
    "maar-sabr:weighting=soft:kl_region=ball",
    "maar-sabr:weighting=hard",
    "maar-sabr:lam=2:weighting=soft",
    "maar-sabr:lam=1:weighting=soft:kl_region=ball",
    "maar-sabr:lam=0.25:weighting=soft",
    "maar-sabr:lam=2:weighting=soft:kl_region=ball",
)
SEARCH_NAME, RUNS_CSV, RANKING_CSV, RANKING_MD = "search.json", "runs.csv", "ranking.csv", "ranking.md"
VALIDATION_FILE = "validation.json"
LIGHT_FILES = (CONFIG_NAME, "metrics.jsonl")  # copied from the run to the results folder
METRICS = (("crown_verified", "CROWN-verified"), ("clean", "clean"), ("ibp_verified", "IBP-verified"),
           ("pgd", "PGD"))


@dataclass(frozen=True)
class Settings:
    """What a search folder holds: the recipe, rows × seeds, the training overrides and how runs are scored."""

    recipe: str
    scale: str
    rows: tuple[str, ...]
    seeds: tuple[int, ...]
    count: int
    crown_count: int
    pgd_steps: int
    pgd_restarts: int
    training: dict

    def __post_init__(self) -> None:
        if not 0 < self.count <= VALIDATION_COUNT or not 0 < self.crown_count <= self.count:
            raise MaarError(f"--count must be in 1..{VALIDATION_COUNT} (the validation images) and --crown-count "
                            f"in 1..--count, got {self.count} and {self.crown_count}")

    def scoring(self) -> dict:
        return {"count": self.count, "crown_count": self.crown_count, "pgd_steps": self.pgd_steps,
                "pgd_restarts": self.pgd_restarts}


def training_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` training options (YAML scalars or lists) applied over the recipe's, e.g. ``epochs=1``."""
    overrides = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key.strip():
            raise MaarError(f"--train {pair!r} is not KEY=VALUE")
        try:
            overrides[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise MaarError(f"--train {pair!r}: cannot read the value") from None
    if {"objective", "objective_args", "seed"} & set(overrides):
        raise MaarError("--train sets training options; objectives go in --configs and seeds in --seeds")
    return overrides


def search_config(recipe: Recipe, training: dict, row: Row, seed: int) -> TrainConfig:
    """The recipe's configuration of one row and seed, with the search's training overrides."""
    config = run_config(recipe, row, seed, "cpu")
    return build_config(config.to_dict(), training) if training else config


def write_settings(out: Path, settings: Settings) -> None:
    """Record the settings in ``out``; a folder holding a search of another recipe, training or scoring is
    refused (its runs would not compare). Rows and seeds may change: the ranking covers the command's."""
    path = out / SEARCH_NAME
    if path.is_file():
        earlier = json.loads(path.read_text())
        mine = {"recipe": settings.recipe, "scale": settings.scale, "training": settings.training,
                **settings.scoring()}
        differing = sorted(key for key, value in mine.items() if earlier.get(key) != value)
        if differing:
            raise MaarError(f"{out} holds a search with other {', '.join(differing)}: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(asdict(settings), indent=2) + "\n")


def scored(run_out: Path, settings: Settings) -> bool:
    path = run_out / VALIDATION_FILE
    if not path.is_file():
        return False
    done = json.loads(path.read_text())
    return all(done.get(key) == value for key, value in settings.scoring().items())


def train_run(config: TrainConfig, run_dir: Path, log) -> None:
    """Train ``run_dir`` (or resume it), unless finished; a run of other options there is refused."""
    state = training_state(run_dir, config.epochs)
    if (run_dir / CONFIG_NAME).is_file():
        existing = json.loads((run_dir / CONFIG_NAME).read_text())
        wanted = config.to_dict()
        differing = sorted(key for key in set(existing) | set(wanted)
                           if key != "device" and existing.get(key) != wanted.get(key))
        if differing:
            raise MaarError(f"{run_dir} was trained with other options ({', '.join(differing)}): move it away")
        if state == "new":  # stopped before its first epoch ended: nothing to keep
            shutil.rmtree(run_dir)
    if state == "done":
        log(f"  {run_dir.name}: trained before (checkpoint in {run_dir})")
        return
    log(f"  {run_dir.name}: training {config.objective} {config.objective_args}"
        + (" (resuming)" if state == "partial" else ""))
    train(None if state == "partial" else config, run_dir, resume=state == "partial", show_progress=False,
          log=lambda line: log(f"  {run_dir.name}: {line}"))


def score_run(run_dir: Path, settings: Settings) -> dict:
    """Accuracies on the first ``count`` validation images (CROWN on the first ``crown_count``) and the
    per-image records a paired comparison needs: misclassified and CROWN-unverified positions."""
    model, config, _ = load_trained_model(run_dir, "cpu")
    images, labels, first = evaluation_images(config, "validation")
    images, labels = images[:settings.count], labels[:settings.count]
    classes = dataset_info(config.dataset).num_classes
    accuracies = evaluate_robustness(model, images, labels, config.eps, classes, pgd_steps=settings.pgd_steps,
                                     pgd_restarts=settings.pgd_restarts, crown_count=0)
    verified = crown_verified(model, images[:settings.crown_count], labels[:settings.crown_count], config.eps,
                              classes)
    accuracies["crown_verified"] = 100.0 * int(verified.sum()) / settings.crown_count
    return {"objective": config.objective, "objective_args": config.objective_args, "seed": config.seed,
            "split": "validation", "first_image": first, "eps": config.eps, **settings.scoring(), **accuracies,
            "misclassified": misclassified_indices(model, images, labels),
            "crown_unverified": (~verified).nonzero().flatten().tolist()}


def run_one(settings: Settings, config: TrainConfig, name: str, out: Path, work: Path, log) -> dict:
    """Train and score one run, each stage skipped when finished; returns its results."""
    run_dir, run_out = work / name, out / "runs" / name
    if not scored(run_out, settings):
        train_run(config, run_dir, log)
        started = time.perf_counter()
        results = score_run(run_dir, settings)
        results.update(training_record(run_dir), score_wall_s=time.perf_counter() - started,
                       score_hardware=describe_device(torch.device("cpu")))
        run_out.mkdir(parents=True, exist_ok=True)
        for file_name in LIGHT_FILES:
            shutil.copyfile(run_dir / file_name, run_out / file_name)
        atomic_write_text(run_out / VALIDATION_FILE, _json_text(results))
    return json.loads((run_out / VALIDATION_FILE).read_text())


def _json_text(results: dict) -> str:
    """Indented JSON with the per-image lists on one line each."""
    lists = ("misclassified", "crown_unverified")
    text = json.dumps({key: value for key, value in results.items() if key not in lists}, indent=2)[:-2]
    return text + "".join(f',\n  "{key}": {json.dumps(results[key])}' for key in lists) + "\n}\n"


def training_record(run_dir: Path) -> dict:
    """Minutes the run's epochs trained (without the per-epoch evaluations) and where, from its metrics."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"train_minutes": sum(record.get("train_seconds", 0.0) for record in records) / 60,
            "train_hardware": records[-1].get("device_name", "")}


def _right(results: dict, key: str, count: int) -> np.ndarray:
    """Per image, whether it is right (``key``: the list of wrong positions), over the first ``count``."""
    right = np.ones(count, dtype=bool)
    right[[index for index in results[key] if index < count]] = False
    return right


def compare(settings: Settings, results: dict[tuple[str, int], dict], label: str, other: str) -> dict | None:
    """``label`` minus ``other`` over the seeds both have (None if none): per metric the mean ± std of the
    differences by seed (``delta_<metric>``), and for CROWN-verified and clean accuracy the difference with its
    bootstrap interval and McNemar's test, paired by seed and image (``paired_<metric>``)."""
    seeds = [seed for seed in settings.seeds if (label, seed) in results and (other, seed) in results]
    if not seeds:
        return None
    comparison: dict = {"seeds": seeds}
    for key, _ in METRICS:
        comparison[f"delta_{key}"] = statistic([results[label, seed][key] - results[other, seed][key]
                                                for seed in seeds])
    for key, wrong, count in (("crown_verified", "crown_unverified", settings.crown_count),
                              ("clean", "misclassified", settings.count)):
        treated = np.stack([_right(results[label, seed], wrong, count) for seed in seeds])
        untreated = np.stack([_right(results[other, seed], wrong, count) for seed in seeds])
        comparison[f"paired_{key}"] = paired_test(treated, untreated)
    return comparison


def rank(settings: Settings, results: dict[tuple[str, int], dict]) -> list[dict]:
    """Per row: mean ± std over seeds of each metric and the comparison with its base (``compare``), sorted
    by CROWN-verified accuracy, then clean accuracy."""
    ranking = []
    for label in settings.rows:
        seeds = [seed for seed in settings.seeds if (label, seed) in results]
        if not seeds:
            continue
        entry: dict = {"row": label, "seeds": seeds}
        for key, _ in METRICS:
            entry[key] = statistic([results[label, seed][key] for seed in seeds])
        base = maar_base(label)
        entry["versus_base"] = compare(settings, results, label, base) if base else None
        entry["base"] = base if entry["versus_base"] else None
        ranking.append(entry)
    return sorted(ranking, key=lambda entry: (-entry["crown_verified"].mean, -entry["clean"].mean))


def versus_first(settings: Settings, results: dict[tuple[str, int], dict], ranking: list[dict]) -> list[dict]:
    """The first setting of the ranking minus each other one (``compare``): is it ahead by more than noise?"""
    if not ranking:
        return []
    first = ranking[0]["row"]
    comparisons = [(entry["row"], compare(settings, results, first, entry["row"])) for entry in ranking[1:]]
    return [{"row": row, **comparison} for row, comparison in comparisons if comparison]


def _stat(value: Statistic | None) -> str:
    return "–" if value is None else f"{value.mean:+.2f} ± {value.spread:.2f}"


def _interval(test: PairedTest | None) -> str:
    return "–" if test is None else f"[{test.low:+.2f}, {test.high:+.2f}], p = {test.p_value:.2g}"


def _difference_cells(comparison: dict | None) -> list[str]:
    comparison = comparison or {}
    return [_stat(comparison.get("delta_crown_verified")), _interval(comparison.get("paired_crown_verified")),
            _stat(comparison.get("delta_clean")), _interval(comparison.get("paired_clean"))]


def ranking_markdown(settings: Settings, ranking: list[dict], against_first: list[dict]) -> str:
    seeds = ",".join(map(str, settings.seeds))
    lines = [
        f"Recipe `{settings.recipe}` at {settings.scale} scale"
        + (f" with {', '.join(f'{k}={v}' for k, v in settings.training.items())}" if settings.training else "")
        + f", seeds {seeds}. Scored on held-out training images (the validation split): CROWN-verified "
        f"accuracy on the first {settings.crown_count}, clean, IBP-verified and PGD ({settings.pgd_steps} steps, "
        f"{settings.pgd_restarts} restart(s)) on the first {settings.count}; mean ± sample std over seeds, in "
        "percent. Δ: minus the base, paired by seed (mean ± std of the differences); by image: the difference's "
        "95 % bootstrap interval over seeds and images and McNemar's exact p. Ranked by CROWN-verified, then clean.",
        "",
        "| rank | setting | seeds | CROWN-verified | clean | IBP-verified | PGD | Δ CROWN | Δ CROWN by image "
        "| Δ clean | Δ clean by image |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for position, entry in enumerate(ranking, start=1):
        cells = [str(position), f"`{entry['row']}`", ",".join(map(str, entry["seeds"])),
                 *(str(entry[key]) for key, _ in METRICS), *_difference_cells(entry["versus_base"])]
        lines.append("| " + " | ".join(cells) + " |")
    if against_first:
        lines += ["", f"`{ranking[0]['row']}` minus each other setting, paired in the same way:", "",
                  "| setting | seeds | Δ CROWN | Δ CROWN by image | Δ clean | Δ clean by image |",
                  "|---|---|---|---|---|---|"]
        for comparison in against_first:
            cells = [f"`{comparison['row']}`", ",".join(map(str, comparison["seeds"])),
                     *_difference_cells(comparison)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _difference_columns(prefix: str = "") -> list[str]:
    columns = [f"{prefix}delta_{key}_{part}" for key, _ in METRICS for part in ("mean", "std")]
    return columns + [f"{prefix}paired_{key}_{part}" for key in ("crown_verified", "clean")
                      for part in ("difference", "low", "high", "p")]


def _difference_values(comparison: dict | None, prefix: str = "") -> dict:
    if not comparison:
        return {}
    values = {}
    for key, _ in METRICS:
        delta = comparison[f"delta_{key}"]
        values[f"{prefix}delta_{key}_mean"] = f"{delta.mean:.2f}"
        values[f"{prefix}delta_{key}_std"] = f"{delta.spread:.2f}"
    for key in ("crown_verified", "clean"):
        test = comparison[f"paired_{key}"]
        values.update({f"{prefix}paired_{key}_difference": f"{test.difference:.2f}",
                       f"{prefix}paired_{key}_low": f"{test.low:.2f}", f"{prefix}paired_{key}_high": f"{test.high:.2f}",
                       f"{prefix}paired_{key}_p": f"{test.p_value:.3g}"})
    return values


def ranking_csv(ranking: list[dict], against_first: list[dict]) -> str:
    """One line per setting: rank, means and stds, the differences to its base and those of the first to it
    (``first_minus_``)."""
    columns = ["rank", "row", "base", "seeds", *(f"{key}_{part}" for key, _ in METRICS for part in ("mean", "std")),
               *_difference_columns(), *_difference_columns("first_minus_")]
    by_row = {comparison["row"]: comparison for comparison in against_first}
    stream = io.StringIO()
    writer = csv.DictWriter(stream, columns, lineterminator="\n")
    writer.writeheader()
    for position, entry in enumerate(ranking, start=1):
        line = {"rank": position, "row": entry["row"], "base": entry["base"] or "",
                "seeds": " ".join(map(str, entry["seeds"]))}
        for key, _ in METRICS:
            line.update({f"{key}_mean": f"{entry[key].mean:.2f}", f"{key}_std": f"{entry[key].spread:.2f}"})
        line.update(_difference_values(entry["versus_base"]))
        line.update(_difference_values(by_row.get(entry["row"]), "first_minus_"))
        writer.writerow(line)
    return stream.getvalue()


def runs_csv(settings: Settings, results: dict[tuple[str, int], dict]) -> str:
    columns = ["row", "seed", *(key for key, _ in METRICS), "train_minutes", "train_hardware", "score_wall_s",
               "score_hardware"]
    stream = io.StringIO()
    writer = csv.DictWriter(stream, columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for label in settings.rows:
        for seed in settings.seeds:
            if (label, seed) in results:
                writer.writerow({"row": label, "seed": seed, **results[label, seed]})
    return stream.getvalue()


def write_tables(settings: Settings, results: dict[tuple[str, int], dict], out: Path) -> str:
    """runs.csv, ranking.csv and ranking.md from the finished runs; returns the Markdown table."""
    ranking = rank(settings, results)
    against_first = versus_first(settings, results, ranking)
    table = ranking_markdown(settings, ranking, against_first)
    atomic_write_text(out / RUNS_CSV, runs_csv(settings, results))
    atomic_write_text(out / RANKING_CSV, ranking_csv(ranking, against_first))
    atomic_write_text(out / RANKING_MD, table)
    return table


def search(settings: Settings, out: Path, work: Path, log=print) -> str:
    """Train and score every (row, seed) not finished yet, then rank; returns the ranking as Markdown."""
    rows = parse_rows(",".join(settings.rows))
    for row in rows:  # fail before training on a row whose base is missing
        base = maar_base(row.label)
        if base is not None and base not in settings.rows:
            raise MaarError(f"{row.label}: its base {base} is not among the rows; add it")
    recipe = load_recipe(settings.recipe, settings.scale)
    tasks = [(row, seed) for row in rows for seed in settings.seeds]
    configs = {(row.label, seed): search_config(recipe, settings.training, row, seed) for row, seed in tasks}
    write_settings(out, settings)
    results: dict[tuple[str, int], dict] = {}
    started, worked = time.perf_counter(), 0
    for done, (row, seed) in enumerate(tasks, start=1):
        fresh = not scored(out / "runs" / row.run_name(seed), settings)
        results[row.label, seed] = result = run_one(settings, configs[row.label, seed], row.run_name(seed), out,
                                                    work, log)
        worked += fresh
        elapsed = time.perf_counter() - started
        remaining = sum(not scored(out / "runs" / later.run_name(s), settings) for later, s in tasks[done:])
        eta = f"{elapsed / worked * remaining / 60:.1f} min" if worked else "–"
        log(f"[{done}/{len(tasks)}] {row.label} seed {seed}: CROWN-verified {result['crown_verified']:.2f}, "
            f"clean {result['clean']:.2f}" + ("" if fresh else " (done before)")
            + f"  (elapsed {elapsed / 60:.1f} min, ETA {eta})")
        write_tables(settings, results, out)
    return write_tables(settings, results, out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="results folder (small files)")
    parser.add_argument("--work", required=True, type=Path, help="folder of the trained runs (checkpoints)")
    parser.add_argument("--recipe", default="mnist-eps0.1-dm-small", help="recipe name or file")
    parser.add_argument("--scale", default="cpu", help="recipe scale: cpu or full")
    parser.add_argument("--configs", default=",".join(DEFAULT_GRID), help="comma-separated rows, as maar reproduce")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--count", type=int, default=1000, help="validation images for clean, IBP and PGD")
    parser.add_argument("--crown-count", type=int, default=500, help="of them, the first N bounded by CROWN")
    parser.add_argument("--pgd-steps", type=int, default=20)
    parser.add_argument("--pgd-restarts", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                        help="training option over the recipe's (repeatable), e.g. --train epochs=1")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        settings = Settings(args.recipe, args.scale, tuple(row.label for row in parse_rows(args.configs)),
                            tuple(parse_seeds(args.seeds)), args.count, args.crown_count, args.pgd_steps,
                            args.pgd_restarts, training_overrides(args.train))
        started = time.perf_counter()
        table = search(settings, args.out, args.work, log=lambda line: print(line, flush=True))
    except MaarError as error:
        print(f"Error: {error}", file=sys.stderr)
        return 1
    print(f"\n{table}\nwall time {(time.perf_counter() - started) / 60:.1f} min; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
