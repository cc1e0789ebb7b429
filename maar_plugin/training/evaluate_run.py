"""``maar evaluate``: a finished (or interrupted) run's metrics recomputed on the test set."""
from __future__ import annotations

import json
from pathlib import Path

from maar_plugin.atomic import atomic_write_text
from maar_plugin.data import dataset_info, load_dataset
from maar_plugin.devices import resolve_device
from maar_plugin.errors import MaarError
from maar_plugin.training.evaluate import evaluate_robustness
from maar_plugin.training.run_files import load_trained_model


def evaluate_run(
    run_dir: str | Path,
    eps: float | None = None,
    count: int | None = None,
    pgd_steps: int = 50,
    pgd_restarts: int = 3,
    crown_count: int | None = None,
) -> dict:
    """Metrics at ``eps`` (default: the run's) on the first ``count`` test images; saved as evaluation.json."""
    device = resolve_device("auto")
    model, config, _ = load_trained_model(run_dir, device)
    eps = config.eps if eps is None else eps
    if not 0 <= eps <= 1:
        raise MaarError(f"--eps must be in [0, 1], got {eps}")
    images, labels = load_dataset(config.dataset, "test", config.data_dir, device)
    if count is not None:
        if not 0 < count <= len(images):
            raise MaarError(f"--count must be in 1..{len(images)}, got {count}")
        images, labels = images[:count], labels[:count]
    accuracies = evaluate_robustness(
        model, images, labels, eps, dataset_info(config.dataset).num_classes,
        pgd_steps=pgd_steps, pgd_restarts=pgd_restarts, crown_count=crown_count,
    )
    crown_count = len(images) if crown_count is None else min(crown_count, len(images))
    results = {"run": str(run_dir), "objective": config.objective, "model": config.model, "eps": eps,
               "count": len(images), "pgd_steps": pgd_steps, "pgd_restarts": pgd_restarts,
               "crown_count": crown_count, **accuracies}
    atomic_write_text(Path(run_dir) / "evaluation.json", json.dumps(results, indent=2) + "\n")
    return results


def format_table(rows: list[dict]) -> str:
    """Accuracy rows as a fixed-width text table."""
    columns = [("clean", "clean"), ("pgd", "PGD"), ("ibp_verified", "IBP-verified"), ("crown_verified", "CROWN-verified")]
    header = f"{'run':<32} {'ε':>6} {'n':>6} " + " ".join(f"{title:>15}" for _, title in columns)
    lines = [header, "-" * len(header)]
    for row in rows:
        cells = " ".join(f"{row[key]:>14.2f}%" if key in row else f"{'-':>15}" for key, _ in columns)
        lines.append(f"{Path(row['run']).name:<32} {row['eps']:>6.3f} {row['count']:>6} {cells}")
    return "\n".join(lines)
