"""``maar reproduce``: train every (objective row, seed) of a recipe, evaluate each run, certify it completely.

Layout of the output folder: ``reproduce.json`` (recipe, scale, rows, seeds), ``runs/<row>-s<seed>/``
(``maar train`` runs, each with ``evaluation.json``) and ``certify/<row>-s<seed>/`` (``maar certify``,
with ``certified_accuracy.json`` and ``per_image.csv``). Every stage is skipped when its result is
already there and resumed when it was interrupted, so rerunning the same command continues the grid,
adding rows or seeds extends it, and another certify count verifies only the images not verified yet.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from maar_plugin.atomic import atomic_write_text
from maar_plugin.certification import CERTIFICATE_NAME, PER_IMAGE_NAME, certificate_verifier, certify, read_per_image
from maar_plugin.errors import MaarError
from maar_plugin.objectives import objective_hyperparameters
from maar_plugin.reproduce.rows import Row, parse_row
from maar_plugin.training.config import TrainConfig
from maar_plugin.training.evaluate_run import EVALUATION_NAME, add_misclassified, evaluate_run
from maar_plugin.training.loop import train
from maar_plugin.training.recipe import EvaluationSettings, Recipe, config_from_recipe, load_recipe
from maar_plugin.training.run_files import CONFIG_NAME, training_state
from maar_plugin.verification import Verifier, VerifyOptions, read_log

PLAN_NAME = "reproduce.json"


@dataclass(frozen=True)
class Plan:
    """What an output folder holds: one recipe at one scale, rows × seeds."""

    recipe: str
    scale: str
    rows: tuple[str, ...]
    seeds: tuple[int, ...]
    device: str = "auto"
    evaluation: dict = field(default_factory=dict, compare=False)  # the recipe's EvaluationSettings


def read_plan(out_dir: str | Path) -> Plan:
    path = Path(out_dir) / PLAN_NAME
    try:
        data = json.loads(path.read_text())
        return Plan(data["recipe"], data["scale"], tuple(data["rows"]), tuple(data["seeds"]),
                    data.get("device", "auto"), dict(data["evaluation"]))
    except FileNotFoundError:
        raise MaarError(f"{out_dir} is not a `maar reproduce` folder (no {PLAN_NAME})") from None
    except (ValueError, KeyError, TypeError) as error:
        raise MaarError(f"{path}: cannot read ({error})") from None


def _extend_plan(out_dir: Path, recipe: Recipe, rows: list[Row], seeds: list[int], device: str) -> Plan:
    """The folder's plan with these rows and seeds added; a different recipe or scale is refused."""
    labels, all_seeds = [row.label for row in rows], list(seeds)
    if (out_dir / PLAN_NAME).exists():
        earlier = read_plan(out_dir)
        if (earlier.recipe, earlier.scale) != (recipe.name, recipe.scale):
            raise MaarError(f"{out_dir} holds recipe {earlier.recipe} at scale {earlier.scale}, not {recipe.name} at "
                            f"{recipe.scale}: choose another --out")
        labels = list(dict.fromkeys([*earlier.rows, *labels]))
        all_seeds = list(dict.fromkeys([*earlier.seeds, *seeds]))
    plan = Plan(recipe.name, recipe.scale, tuple(labels), tuple(all_seeds), device, asdict(recipe.evaluation))
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**asdict(plan), "training": recipe.training}
    atomic_write_text(out_dir / PLAN_NAME, json.dumps(payload, indent=2) + "\n")
    return plan


def run_config(recipe: Recipe, row: Row, seed: int, device: str) -> TrainConfig:
    """The recipe's training configuration for one row and seed."""
    return config_from_recipe(recipe.training, {"objective": row.objective, "objective_args": row.objective_args,
                                                **row.training_args, "seed": seed, "device": device},
                              base_args=recipe.base_args)


def _with_defaults(options: dict) -> dict:
    """Training options with the objective's hyperparameters completed by their defaults."""
    table = objective_hyperparameters(options["objective"], options.get("objective_args"))
    defaults = {key: default for key, (default, _) in table.items()}
    return {**options, "objective_args": {**defaults, **(options.get("objective_args") or {})}}


def _same_training(run_dir: Path, config: TrainConfig) -> None:
    existing = _with_defaults(json.loads((run_dir / CONFIG_NAME).read_text()))
    wanted = _with_defaults(config.to_dict())
    differing = sorted(key for key in set(existing) | set(wanted)
                       if key != "device" and existing.get(key) != wanted.get(key))
    if differing:
        raise MaarError(f"{run_dir} was trained with other options ({', '.join(differing)}) than the recipe gives now; "
                        "move it away or choose another --out")


def _evaluation_done(run_dir: Path, eps: float, settings: EvaluationSettings) -> bool:
    path = run_dir / EVALUATION_NAME
    if not path.is_file():
        return False
    done = json.loads(path.read_text())
    wanted = {"eps": eps, "count": settings.count, "crown_count": settings.crown_count,
              "pgd_steps": settings.pgd_steps, "pgd_restarts": settings.pgd_restarts}
    return all(done.get(key) == value for key, value in wanted.items())


def _certificate_done(certify_dir: Path, count: int, timeout: float, retry_timeout: float | None) -> bool:
    """A certificate of ``count`` instances whose open ones were verified with ``timeout`` or more, and
    retried with ``retry_timeout`` (if any are), with its ``per_image.csv``. A folder without the
    verification log (packed light) is done without ``per_image.csv``: nothing could write it."""
    path = certify_dir / CERTIFICATE_NAME
    if not path.is_file():
        return False
    certificate = json.loads(path.read_text())
    retried = retry_timeout is None or certificate.get("open") == 0 \
        or (certificate.get("retry_timeout") or 0.0) >= retry_timeout
    if certificate.get("count") != count or not retried:
        return False
    if not (certify_dir / PER_IMAGE_NAME).is_file():
        return not read_log(certify_dir / "verification")
    return not _open_with_less(certify_dir, timeout)


def _open_with_less(certify_dir: Path, timeout: float) -> bool:
    """Whether ``per_image.csv`` has open instances verified with less than ``timeout`` seconds."""
    return any(image.verdict not in ("sat", "unsat") and image.timeout is not None and image.timeout < timeout
               for image in read_per_image(certify_dir / PER_IMAGE_NAME))


def _same_verifier(certify_dir: Path, verifier: Verifier | None) -> None:
    """A finished certification by one verifier is not silently reused for a table asked of the other."""
    path = certify_dir / CERTIFICATE_NAME
    wanted = "abcrown" if verifier is not None else "builtin"
    done = certificate_verifier(json.loads(path.read_text())) if path.is_file() else wanted
    if done != wanted:
        raise MaarError(f"{certify_dir} was certified with --verifier {done}; rerun with it, or use another --out")


def _earlier_count(certify_dir: Path, count: int) -> str:
    """`` (extending the 100 certified)`` where the folder's certificate is of another count; else empty."""
    path = certify_dir / CERTIFICATE_NAME
    earlier = json.loads(path.read_text()).get("count") if path.is_file() else None
    if earlier is None or earlier == count:
        return ""
    if earlier < count:
        return f" (extending the {earlier} certified)"
    return f" (the first {count} of the {earlier} certified)"


@dataclass(frozen=True)
class _Task:
    config: TrainConfig
    evaluation: EvaluationSettings
    run_dir: Path
    certify_dir: Path
    progress: bool
    threads: int | None
    verifier: Verifier | None = None
    options: VerifyOptions | None = None


def _run_task(task: _Task, log: Callable[[str], None] = print) -> str:
    """Train, evaluate and certify one run, skipping finished stages; returns a one-line summary."""
    _train_and_evaluate(task, log)
    return _certify_run(task, 1, log)


def _train_and_evaluate(task: _Task, log: Callable[[str], None] = print) -> None:
    """The training and evaluation stages of one run, each skipped when finished."""
    if task.threads:
        import torch

        torch.set_num_threads(task.threads)
    name, config, settings = task.run_dir.name, task.config, task.evaluation
    state = training_state(task.run_dir, config.epochs)
    started = (task.run_dir / CONFIG_NAME).is_file()
    if started:
        _same_training(task.run_dir, config)
    note = " (resuming)" if state == "partial" else ""
    if state == "new" and started:  # stopped before its first epoch ended: nothing to keep
        shutil.rmtree(task.run_dir)
        note = " (again: it stopped before its first epoch)"
    if state != "done":
        log(f"{name}: training {config.objective} {config.objective_args or ''} for {config.epochs} epochs{note}")
        train(None if state == "partial" else config, task.run_dir, resume=state == "partial",
              show_progress=task.progress, log=lambda line: log(f"{name}: {line}"))
    if not _evaluation_done(task.run_dir, config.eps, settings):
        log(f"{name}: evaluating on {settings.count} test images")
        evaluate_run(task.run_dir, eps=config.eps, count=settings.count, pgd_steps=settings.pgd_steps,
                     pgd_restarts=settings.pgd_restarts, crown_count=settings.crown_count, device=config.device)
    elif add_misclassified(task.run_dir):
        log(f"{name}: misclassified test images added to {EVALUATION_NAME}")


def _certify_run(task: _Task, jobs: int, log: Callable[[str], None]) -> str:
    """The certification stage of one run in ``jobs`` shard processes (skipped when finished); returns a
    one-line summary of the run."""
    name, config, settings = task.run_dir.name, task.config, task.evaluation
    _same_verifier(task.certify_dir, task.verifier)
    count, timeout, retry = settings.certify_count, settings.certify_timeout, settings.certify_retry_timeout
    if not _certificate_done(task.certify_dir, count, timeout, retry):
        if (task.certify_dir / PER_IMAGE_NAME).is_file() and _open_with_less(task.certify_dir, timeout):
            retry = max(timeout, retry or 0.0)  # open ones of a shorter first pass: again with this one's timeout
        log(f"{name}: complete verification of {count} test images{_earlier_count(task.certify_dir, count)}"
            + (f" in {jobs} shards" if jobs > 1 else "") + (f", open ones again with {retry:g} s" if retry else ""))
        resume = task.certify_dir.is_dir() and any(task.certify_dir.iterdir())
        options = replace(task.options or VerifyOptions(), timeout=timeout)
        certify(task.run_dir, config.eps, count, task.certify_dir, timeout=timeout, resume=resume, options=options,
                progress=task.progress, jobs=jobs, retry_open=retry, verifier=task.verifier)
    evaluation = json.loads((task.run_dir / EVALUATION_NAME).read_text())
    certificate = json.loads((task.certify_dir / CERTIFICATE_NAME).read_text())
    return (f"{name}: clean {evaluation['clean']:.2f}%  IBP-verified {evaluation['ibp_verified']:.2f}%  "
            f"complete-certified {certificate['complete']:.2f}% ({certificate['open']} open)")


def reproduce(
    recipe_name: str,
    rows: list[str],
    seeds: list[int],
    out_dir: str | Path,
    scale: str = "full",
    jobs: int = 1,
    device: str = "auto",
    progress: bool = True,
    log: Callable[[str], None] = print,
    verifier: Verifier | None = None,
    retry_open: float | None = None,
    certify_count: int | None = None,
    certify_timeout: float | None = None,
    options: VerifyOptions | None = None,
) -> Plan:
    """Train, evaluate and certify ``rows`` × ``seeds`` of a recipe into ``out_dir`` (resumable).

    ``jobs`` > 1 trains and evaluates that many (row, seed) runs side by side in separate processes (on a
    CPU each gets an equal share of the cores; on a GPU they share the card), then certifies run after run,
    each in ``jobs`` processes that verify one shard of its instances (``maar certify --jobs``).
    ``verifier`` (e.g. α,β-CROWN) replaces our cascade in the complete verification. ``retry_open``
    overrides the recipe's ``certify_retry_timeout`` (0: open instances are not verified again),
    ``certify_count`` its ``certify_count`` (the first test images verified completely; a finished
    certification of another count is extended, its verified images kept) and ``certify_timeout`` its
    ``certify_timeout`` (seconds per instance in the first pass). ``options`` are the verifier's settings
    (the certify timeout replaces theirs).
    """
    if jobs < 1:
        raise MaarError(f"--jobs must be at least 1, got {jobs}")
    if retry_open is not None and retry_open < 0:
        raise MaarError(f"--retry-open must be 0 (no retry) or a positive number of seconds, got {retry_open:g}")
    if certify_count is not None and certify_count < 1:
        raise MaarError(f"--certify-count must be at least 1, got {certify_count}")
    if certify_timeout is not None and not certify_timeout > 0:
        raise MaarError(f"--certify-timeout must be a positive number of seconds, got {certify_timeout:g}")
    out_dir = Path(out_dir)
    recipe = load_recipe(recipe_name, scale)
    evaluation = recipe.evaluation
    if certify_count is not None:
        evaluation = replace(evaluation, certify_count=certify_count)
    if certify_timeout is not None:
        evaluation = replace(evaluation, certify_timeout=certify_timeout)
    if retry_open is not None:
        evaluation = replace(evaluation, certify_retry_timeout=retry_open or None)
    recipe = replace(recipe, evaluation=evaluation)
    parsed = [parse_row(row) for row in rows]
    plan = _extend_plan(out_dir, recipe, parsed, seeds, device)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    tasks = [
        _Task(run_config(recipe, row, seed, device), recipe.evaluation, out_dir / "runs" / row.run_name(seed),
              out_dir / "certify" / row.run_name(seed), progress and jobs == 1, threads, verifier, options)
        for row in parsed for seed in seeds
    ]
    log(f"{recipe.name} ({recipe.scale} scale): {len(parsed)} row(s) × {len(seeds)} seed(s) = {len(tasks)} runs in "
        f"{out_dir}" + (f", {jobs} at a time" if jobs > 1 else ""))
    started = time.perf_counter()

    def report_done(done: int, summary: str) -> None:
        elapsed = time.perf_counter() - started
        eta = elapsed / done * (len(tasks) - done)
        log(f"[{done}/{len(tasks)}] {summary}  (elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)")

    if jobs == 1:
        for done, task in enumerate(tasks, start=1):
            report_done(done, _run_task(task, log))
        return plan
    with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in as_completed([pool.submit(_train_and_evaluate, task) for task in tasks]):
            future.result()
    for done, task in enumerate(tasks, start=1):
        report_done(done, _certify_run(task, jobs, log))
    return plan
