"""``maar evaluate``: a finished (or interrupted) run's metrics recomputed on the test set, or on held-out
training images (``split="validation"``: the last VALIDATION_COUNT of the training set, for choosing
hyperparameters without looking at the test set).

Where the results go: ``evaluation.json``, the file ``maar report`` reads, only for the test set at the
run's ε with the settings of its ``maar reproduce`` folder (or, outside one, on the whole test set);
``evaluation-validation.json`` for the validation images at the run's ε, all of them; any other radius
or count to a file named by both, e.g. ``evaluation-eps0.1-n1000.json``. Every file lists the indices of
the misclassified images (``misclassified``, positions among the evaluated images), which paired
comparisons of two runs on the same images need.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from maar_plugin.atomic import atomic_write_text
from maar_plugin.data import dataset_info, load_dataset
from maar_plugin.devices import resolve_device
from maar_plugin.errors import MaarError
from maar_plugin.training.config import TrainConfig
from maar_plugin.training.evaluate import evaluate_robustness
from maar_plugin.training.run_files import load_trained_model

EVALUATION_NAME = "evaluation.json"
VALIDATION_NAME = "evaluation-validation.json"
SPLITS = ("test", "validation")
VALIDATION_COUNT = 5000


def evaluation_images(config: TrainConfig, split: str, device: torch.device | str = "cpu"
                      ) -> tuple[Tensor, Tensor, int]:
    """Images, labels and the index of the first one in its dataset split: the test set, or the last
    VALIDATION_COUNT training images, refused for a run that trained on them."""
    if split not in SPLITS:
        raise MaarError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if split == "test":
        images, labels = load_dataset(config.dataset, "test", config.data_dir, device)
        return images, labels, 0
    images, labels = load_dataset(config.dataset, "train", config.data_dir, device)
    first = len(images) - VALIDATION_COUNT
    if config.train_count is None or config.train_count > first:
        trained = "all" if config.train_count is None else f"the first {config.train_count}"
        raise MaarError(f"the run trained on {trained} training images, so the last {VALIDATION_COUNT} are not held "
                        f"out: --split validation needs a run with train_count at most {first}")
    return images[first:], labels[first:], first


@torch.no_grad()
def misclassified_indices(model: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> list[int]:
    """Positions of the images the model classifies wrongly."""
    model.eval()
    wrong = [model(images[start:start + batch_size]).argmax(dim=1) != labels[start:start + batch_size]
             for start in range(0, len(images), batch_size)]
    return torch.cat(wrong).nonzero().flatten().tolist()


def _reproduce_settings(run_dir: Path) -> dict | None:
    """The evaluation settings of the ``maar reproduce`` folder holding the run, if it is in one."""
    from maar_plugin.reproduce.run import PLAN_NAME, read_plan  # here: reproduce builds on this module

    folder = run_dir.parent.parent
    return read_plan(folder).evaluation if run_dir.parent.name == "runs" and (folder / PLAN_NAME).is_file() else None


def evaluation_path(run_dir: str | Path, results: dict, run_eps: float, split_size: int) -> Path:
    """Where ``results`` of ``evaluate_run`` belong (see the module): the report's file only for its settings."""
    run_dir = Path(run_dir)
    eps, count = results["eps"], results["count"]
    if results["split"] == "validation":
        standard, name = eps == run_eps and count == VALIDATION_COUNT, VALIDATION_NAME
    else:
        settings = _reproduce_settings(run_dir)
        wanted = None if settings is None else {
            "count": settings.get("count"), "crown_count": min(settings.get("crown_count", -1), count),
            "pgd_steps": settings.get("pgd_steps"), "pgd_restarts": settings.get("pgd_restarts")}
        standard = eps == run_eps and (count == split_size if wanted is None
                                       else all(results[key] == value for key, value in wanted.items()))
        name = EVALUATION_NAME
    return run_dir / (name if standard else name.replace(".json", f"-eps{eps:g}-n{count}.json"))


def evaluate_run(
    run_dir: str | Path,
    eps: float | None = None,
    count: int | None = None,
    pgd_steps: int = 50,
    pgd_restarts: int = 3,
    crown_count: int | None = None,
    split: str = "test",
    device: str = "auto",
) -> tuple[dict, Path]:
    """Metrics at ``eps`` (default: the run's) on the first ``count`` images of ``split`` (test or
    validation), computed on ``device`` (auto, cpu, cuda, cuda:N); returns them and the file they were saved
    in (``evaluation_path``)."""
    torch_device = resolve_device(device)
    model, config, _ = load_trained_model(run_dir, torch_device)
    eps = config.eps if eps is None else eps
    if not 0 <= eps <= 1:
        raise MaarError(f"--eps must be in [0, 1], got {eps}")
    images, labels, first = evaluation_images(config, split, torch_device)
    split_size = len(images)
    if count is not None:
        if not 0 < count <= len(images):
            raise MaarError(f"--count must be in 1..{len(images)}, got {count}")
        images, labels = images[:count], labels[:count]
    accuracies = evaluate_robustness(
        model, images, labels, eps, dataset_info(config.dataset).num_classes,
        pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, crown_count=crown_count,
    )
    crown_count = len(images) if crown_count is None else min(crown_count, len(images))
    results = {"run": str(run_dir), "objective": config.objective, "model": config.model, "split": split,
               "first_image": first, "eps": eps, "count": len(images), "pgd_steps": pgd_steps,
               "pgd_restarts": pgd_restarts, "crown_count": crown_count, **accuracies,
               "misclassified": misclassified_indices(model, images, labels)}
    path = evaluation_path(run_dir, results, config.eps, split_size)
    atomic_write_text(path, _json_text(results))
    return results, path


def add_misclassified(run_dir: str | Path) -> bool:
    """Add ``misclassified`` to a run's ``evaluation.json`` written without it (by earlier versions): one
    forward pass over its test images. Returns whether the file changed."""
    path = Path(run_dir) / EVALUATION_NAME
    results = json.loads(path.read_text())
    if "misclassified" in results:
        return False
    device = resolve_device("auto")
    model, config, _ = load_trained_model(run_dir, device)
    images, labels = load_dataset(config.dataset, "test", config.data_dir, device)
    count = results["count"]
    results = {**results, "split": "test", "first_image": 0,
               "misclassified": misclassified_indices(model, images[:count], labels[:count])}
    atomic_write_text(path, _json_text(results))
    return True


def _json_text(results: dict) -> str:
    """Indented JSON with the list of misclassified images on one line."""
    text = json.dumps({key: value for key, value in results.items() if key != "misclassified"}, indent=2)
    return text[:-2] + ',\n  "misclassified": ' + json.dumps(results["misclassified"]) + "\n}\n"


def format_table(rows: list[dict]) -> str:
    """Accuracy rows as a fixed-width text table."""
    columns = [("clean", "clean"), ("pgd", "PGD"), ("ibp_verified", "IBP-verified"),
               ("crown_verified", "CROWN-verified")]
    header = f"{'run':<32} {'ε':>6} {'n':>6} " + " ".join(f"{title:>15}" for _, title in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = " ".join(f"{row[key]:>14.2f}%" if key in row else f"{'-':>15}" for key, _ in columns)
        lines.append(f"{Path(row['run']).name:<32} {row['eps']:>6.3f} {row['count']:>6} {cells}")
    return "\n".join(lines)
