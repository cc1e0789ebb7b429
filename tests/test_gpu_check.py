"""benchmarks/gpu_check.py end to end on the CPU at tiny sizes, as a subprocess (as it runs on a GPU machine);
about 45 s on two cores, so that a change that breaks the script shows before a GPU is at hand."""
from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OBJECTIVES = ("natural", "ibp", "crown-ibp", "sabr", "mtl-ibp", "maar-ibp", "maar-crown-ibp", "maar-sabr",
              "maar-mtl-ibp")
ROWS = {(shape, model, objective) for shape in ("mnist", "cifar10") for model in ("dm-large", "cnn7")
        for objective in OBJECTIVES}


def run_check(tmp_path: Path, *arguments: str) -> Path:
    out = tmp_path / "out"
    environment = dict(os.environ, OMP_NUM_THREADS="1",
                       PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    completed = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out),
         "--work", str(tmp_path / "work"), *arguments],
        env=environment, capture_output=True, text=True, timeout=900)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-4000:]
    return out


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_tiny_check_measures_every_row_trains_and_verifies_alike_on_both_runs(tmp_path):
    out = run_check(tmp_path)
    results = json.loads((out / "results.json").read_text())

    steps = {(row["shape"], row["model"], row["objective"]): row for row in read_csv(out / "training_steps.csv")}
    assert set(steps) == ROWS
    assert all(row["status"] == "done" and float(row["ms_per_step"]) > 0 for row in steps.values())
    for (shape, model, objective), row in steps.items():
        ms = float(row["ms_per_step"])
        if objective != "natural":
            assert float(row["vs_natural"]) == pytest.approx(ms / float(steps[shape, model, "natural"]["ms_per_step"]),
                                                             rel=1e-2)
        if objective.startswith("maar-"):
            base = float(steps[shape, model, objective.removeprefix("maar-")]["ms_per_step"])
            assert float(row["maar_vs_base"]) == pytest.approx(ms / base, rel=1e-2)

    epochs = read_csv(out / "training_epochs.csv")
    assert [int(epoch["epoch"]) for epoch in epochs] == [1, 2]
    losses = [float(epoch["loss_total"]) for epoch in epochs]
    assert all(math.isfinite(loss) and loss > 0 for loss in losses)
    assert all(0 <= float(epoch["clean"]) <= 100 for epoch in epochs)
    assert results["training_run"]["status"] == "done"
    assert results["training_run"]["loss_fell"] == (losses[1] < losses[0])

    runs = read_csv(out / "verification.csv")
    assert [run["device"] for run in runs] == ["cpu", "cpu"]
    verdict_columns = [column for column in runs[0] if column.startswith("verdict_")]
    for run in runs:
        assert run["status"] == "done" and int(run["finished"]) == int(run["instances"]) == 3
        assert sum(int(run[column]) for column in verdict_columns) == 3
        assert float(run["instances_per_s_wall"]) > 0
    assert [runs[0][column] for column in verdict_columns] == [runs[1][column] for column in verdict_columns]
    assert results["verification"]["verdict_counts_equal"] and results["verification"]["contradictions"] == []

    summary = (out / "summary.md").read_text()
    assert "## Training steps" in summary and "## Training run" in summary and "## maar verify" in summary


def test_spent_budgets_leave_every_part_marked_not_run(tmp_path):
    out = run_check(tmp_path, "--budgets", "0,0,0")
    results = json.loads((out / "results.json").read_text())
    rows = read_csv(out / "training_steps.csv")
    assert {(row["shape"], row["model"], row["objective"]) for row in rows} == ROWS
    assert all(row["ms_per_step"] == "" and row["status"].startswith("not run") for row in rows)
    assert results["training_steps"]["status"] == "0 of 36 rows timed"
    assert results["training_run"]["status"].startswith("not run") and results["training_run"]["epochs"] == []
    assert results["verification"]["status"].startswith("not run")
