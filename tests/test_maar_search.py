"""benchmarks/maar_search.py end to end on a tiny grid (two settings, one seed, 64 training images, one epoch),
as a subprocess: its files, their numbers against the trained networks, the resumption and a refusal."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from helpers import REPO, pythonpath_with
from maar_plugin.data import load_dataset
from maar_plugin.training.run_files import load_trained_model

ROWS = ("sabr", "maar-sabr:weighting=soft")
RUN_NAMES = ("sabr-s0", "maar-sabr_weighting=soft-s0")
COUNT, CROWN_COUNT = 40, 20
TINY = ("--train", "train_count=64", "--train", "epochs=1", "--train", "warmup_epochs=0", "--train",
        "ramp_epochs=1", "--train", "batch_size=32", "--train", "eval_count=16")


def run_search(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(REPO / "benchmarks" / "maar_search.py"), "--out", str(tmp_path / "out"),
               "--work", str(tmp_path / "work"), "--configs", ",".join(ROWS), "--seeds", "0",
               "--count", str(COUNT), "--crown-count", str(CROWN_COUNT), *TINY, *extra]
    environment = dict(os.environ, PYTHONPATH=pythonpath_with(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=600)


def read_csv(path: Path) -> list[dict]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


def test_tiny_search_scores_ranks_and_resumes(tmp_path):
    first = run_search(tmp_path)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    out = tmp_path / "out"
    assert {path.name for path in out.iterdir()} == {"search.json", "runs", "runs.csv", "ranking.csv", "ranking.md"}
    assert not list(out.rglob("*.pt"))  # checkpoints stay in --work
    assert "[2/2] maar-sabr:weighting=soft seed 0" in first.stdout and "ETA" in first.stdout

    # Each run's scores are those of its network on the validation images (the last 5,000 training images).
    images, labels = load_dataset("mnist", "train")
    images, labels = images[55000:55000 + COUNT], labels[55000:55000 + COUNT]
    scores = {}
    for name in RUN_NAMES:
        assert {path.name for path in (out / "runs" / name).iterdir()} == {"config.json", "metrics.jsonl",
                                                                           "validation.json"}
        score = scores[name] = json.loads((out / "runs" / name / "validation.json").read_text())
        assert (score["first_image"], score["count"], score["crown_count"]) == (55000, COUNT, CROWN_COUNT)
        model, config, _ = load_trained_model(tmp_path / "work" / name)
        assert config.train_count == 64
        with torch.no_grad():
            wrong = (model(images).argmax(dim=1) != labels).nonzero().flatten().tolist()
        assert score["misclassified"] == wrong
        assert score["clean"] == 100.0 * (COUNT - len(wrong)) / COUNT
        assert score["crown_verified"] == 100.0 * (CROWN_COUNT - len(score["crown_unverified"])) / CROWN_COUNT
        assert {index for index in wrong if index < CROWN_COUNT} <= set(score["crown_unverified"])

    runs = {row["row"]: row for row in read_csv(out / "runs.csv")}
    assert set(runs) == set(ROWS)
    ranking = {row["row"]: row for row in read_csv(out / "ranking.csv")}
    assert sorted(int(row["rank"]) for row in ranking.values()) == [1, 2]
    maar, base = ranking["maar-sabr:weighting=soft"], ranking["sabr"]
    assert (maar["base"], base["base"]) == ("sabr", "")
    for key in ("crown_verified", "clean"):
        difference = float(runs[maar["row"]][key]) - float(runs["sabr"][key])
        assert float(maar[f"delta_{key}_mean"]) == round(difference, 2)
        assert float(maar[f"paired_{key}_difference"]) == round(difference, 2)
    better = max(ranking.values(), key=lambda row: (float(row["crown_verified_mean"]), float(row["clean_mean"])))
    worse = next(row for row in ranking.values() if row is not better)
    assert (better["rank"], worse["rank"]) == ("1", "2")
    assert better["first_minus_delta_clean_mean"] == ""
    for key in ("crown_verified", "clean"):
        difference = float(runs[better["row"]][key]) - float(runs[worse["row"]][key])
        assert float(worse[f"first_minus_paired_{key}_difference"]) == round(difference, 2)
    table = (out / "ranking.md").read_text()
    assert "| 1 | `" + better["row"] + "` |" in table
    assert f"`{better['row']}` minus each other setting" in table and f"| `{worse['row']}` | 0 |" in table

    # Rerunning skips what is done; a run whose score is missing is scored again, not trained again.
    (out / "runs" / RUN_NAMES[1] / "validation.json").unlink()
    checkpoint = tmp_path / "work" / RUN_NAMES[1] / "checkpoint.pt"
    trained_at = checkpoint.stat().st_mtime_ns
    second = run_search(tmp_path)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert "[1/2] sabr seed 0" in second.stdout and "(done before)" in second.stdout
    assert f"{RUN_NAMES[1]}: trained before" in second.stdout
    assert checkpoint.stat().st_mtime_ns == trained_at
    rescored = json.loads((out / "runs" / RUN_NAMES[1] / "validation.json").read_text())
    for key in ("clean", "crown_verified", "misclassified", "crown_unverified"):
        assert rescored[key] == scores[RUN_NAMES[1]][key]

    # Another scoring in the same folder would not compare: refused in one line.
    refused = run_search(tmp_path, "--crown-count", "10")
    assert refused.returncode == 1
    assert refused.stderr.strip().splitlines() == [
        f"Error: {out} holds a search with other crown_count: choose another --out"]
