"""Per-epoch metrics of a run: a JSON-lines file and a PNG plot, both rewritten atomically each epoch."""
from __future__ import annotations

import io
import json
from pathlib import Path

from maar_plugin.atomic import atomic_write_bytes, atomic_write_text

METRICS_NAME = "metrics.jsonl"
PLOT_NAME = "metrics.png"
ACCURACY_KEYS = ("clean", "pgd", "ibp_verified", "crown_verified")


def write_metrics(run_dir: Path, history: list[dict]) -> None:
    atomic_write_text(run_dir / METRICS_NAME, "".join(json.dumps(record) + "\n" for record in history))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """The per-epoch records of a run (none where it has not finished an epoch)."""
    path = Path(run_dir) / METRICS_NAME
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_metrics(run_dir: Path, history: list[dict]) -> None:
    """Accuracies, loss terms and the ε/λ schedule against the epoch, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [record["epoch"] for record in history]
    figure, (accuracy_axis, loss_axis, schedule_axis) = plt.subplots(1, 3, figsize=(14, 4))
    for key in ACCURACY_KEYS:
        if all(key in record for record in history):
            accuracy_axis.plot(epochs, [record[key] for record in history], marker="o", label=key)
    accuracy_axis.set(xlabel="epoch", ylabel="test accuracy (%)", title="accuracy at target ε")
    accuracy_axis.legend()
    loss_keys = sorted({key for record in history for key in record if key.startswith("loss_")})
    for key in loss_keys:
        loss_axis.plot(epochs, [record.get(key, float("nan")) for record in history], marker=".", label=key[5:])
    loss_axis.set(xlabel="epoch", title="training loss terms (epoch mean)")
    loss_axis.legend()
    schedule_axis.plot(epochs, [record["train_eps"] for record in history], marker=".", label="ε (end of epoch)")
    if any("loss_lambda" in record for record in history):
        schedule_axis.plot(epochs, [record.get("loss_lambda", 0.0) for record in history], marker=".", label="λ")
    schedule_axis.set(xlabel="epoch", title="schedules")
    schedule_axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    atomic_write_bytes(run_dir / PLOT_NAME, buffer.getvalue())
