"""Sharded `maar verify`: `--shard K/N`, torchrun ranks from the environment, per-shard resume, merged reports."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import pythonpath_with, write_tiny_benchmark
from maar_plugin.cli import cli
from maar_plugin.errors import MaarError
from maar_plugin.verification import Shard, parse_shard, rank_device, read_log, shard_from_env

FAST_FLAGS = ["--pgd-steps", "5", "--pgd-restarts", "1", "--alpha-iterations", "3", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


VERDICT_COLUMNS = ("instance", "onnx", "vnnlib", "verdict", "stage", "unstable_relus")


@pytest.fixture
def benchmark(tmp_path: Path) -> Path:
    """Five instances on one small network (two pairs with the same name), sat and unsat mixed."""
    return write_tiny_benchmark(tmp_path, ["always", "never", "also", "always", "never"])


def verify(benchmark: Path, out: Path, *extra: str, env: dict | None = None):
    return CliRunner().invoke(cli, ["verify", "--instances", str(benchmark / "instances.csv"), "--out", str(out),
                                    *FAST_FLAGS, *extra], env=env)


def verdict_rows(summary: Path) -> list[tuple]:
    return [tuple(row[key] for key in VERDICT_COLUMNS) for row in csv.DictReader(io.StringIO(summary.read_text()))]


def test_shards_parse_and_bad_values_are_one_line_errors(benchmark, tmp_path):
    assert parse_shard("1/3") == Shard(1, 3) and Shard(1, 3).select(list(range(7))) == [1, 4]
    for text in ["3/3", "-1/2", "1", "a/b", "0/0"]:
        with pytest.raises(MaarError, match="--shard"):
            parse_shard(text)
    assert shard_from_env({"RANK": "1", "WORLD_SIZE": "2"}) == Shard(1, 2)
    assert shard_from_env({"RANK": "0", "WORLD_SIZE": "1"}) is None and shard_from_env({}) is None
    with pytest.raises(MaarError, match="RANK"):
        shard_from_env({"RANK": "2", "WORLD_SIZE": "2"})
    assert rank_device("cuda", {"LOCAL_RANK": "3"}) == "cuda:3" and rank_device("cpu", {"LOCAL_RANK": "3"}) == "cpu"
    for extra, env, message in [(["--shard", "2/2"], None, "0 <= K < N"),
                                (["--shard", "x"], None, "K/N"),
                                (["--shard", "0/2"], {"RANK": "0", "WORLD_SIZE": "2"}, "torchrun")]:
        result = verify(benchmark, tmp_path / "bad", *extra, env=env)
        assert result.exit_code == 1 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


def test_two_shards_merge_to_the_unsharded_summary(benchmark, tmp_path):
    assert verify(benchmark, tmp_path / "whole").exit_code == 0
    out = tmp_path / "sharded"
    for shard in ("1/2", "0/2"):  # any order: the merge follows the csv
        result = verify(benchmark, out, "--shard", shard)
        assert result.exit_code == 0 and f"log.shard-{shard[0]}-of-2.jsonl" in result.output, result.output
    assert not (out / "log.jsonl").exists()
    shard_0 = (out / "log.shard-0-of-2.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in shard_0] == [0, 2, 4]
    assert len(verdict_rows(out / "summary.shard-1-of-2.csv")) == 2
    assert sorted(path.name for path in (out / "results").iterdir()) == sorted(
        path.name for path in (tmp_path / "whole" / "results").iterdir())

    report = CliRunner().invoke(cli, ["report", str(out)])
    assert report.exit_code == 0 and "shard logs merged: 5 instances" in report.output, report.output
    whole = verdict_rows(tmp_path / "whole" / "summary.csv")
    assert [row[3] for row in whole] == ["sat", "unsat", "unsat", "sat", "unsat"]
    assert verdict_rows(out / "summary.csv") == whole
    assert [r.verdict for r in read_log(out)] == [row[3] for row in whole]

    again = verify(benchmark, out, "--shard", "0/2")
    assert again.exit_code == 1 and "--resume" in again.output
    other_split = verify(benchmark, out, "--shard", "0/3")
    assert other_split.exit_code == 1 and "log.shard-" in other_split.output


def test_ranks_from_the_environment_take_their_shares(benchmark, tmp_path):
    out = tmp_path / "ranks"
    command = [sys.executable, "-m", "maar_plugin", "verify", "--instances", str(benchmark / "instances.csv"),
               "--out", str(out), *FAST_FLAGS]
    environment = {**os.environ, "PYTHONPATH": pythonpath_with(REPO), "WORLD_SIZE": "2", "LOCAL_RANK": "0"}
    environment.pop("MASTER_ADDR", None)  # no rendezvous: each rank verifies and reports its shard alone
    ranks = [subprocess.Popen(command, env={**environment, "RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in range(2)]
    outputs = [rank.communicate(timeout=120)[0] for rank in ranks]
    assert [rank.returncode for rank in ranks] == [0, 0], outputs
    assert "shard 1/2" in outputs[1]
    assert [len((out / f"log.shard-{rank}-of-2.jsonl").read_text().splitlines()) for rank in range(2)] == [3, 2]
    assert [r.verdict for r in read_log(out)] == ["sat", "unsat", "unsat", "sat", "unsat"]


def test_a_torchrun_launch_splits_the_csv(benchmark, tmp_path):
    out = tmp_path / "torchrun"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "maar_plugin", "verify",
               "--instances", str(benchmark / "instances.csv"), "--out", str(out), *FAST_FLAGS]
    launch = subprocess.run(command, env={**os.environ, "PYTHONPATH": pythonpath_with(REPO)}, capture_output=True,
                            text=True, timeout=120)
    assert launch.returncode == 0, launch.stdout + launch.stderr
    assert launch.stdout.count("verdicts ") == 1 and "unsat: 3  sat: 2" in launch.stdout  # rank 0 prints the merge
    assert [row[3] for row in verdict_rows(out / "summary.csv")] == ["sat", "unsat", "unsat", "sat", "unsat"]


def test_a_killed_shard_resumes_from_its_own_log(benchmark, tmp_path):
    out = tmp_path / "killed"
    assert verify(benchmark, out, "--shard", "0/2").exit_code == 0
    log = out / "log.shard-0-of-2.jsonl"
    first, second, _ = log.read_text().splitlines()
    kept = {**json.loads(first), "message": "kept from the first run"}
    log.write_text(json.dumps(kept) + "\n" + second[:25])  # killed while writing the shard's 2nd record
    assert verify(benchmark, out, "--shard", "1/2").exit_code == 0  # the other shard is not disturbed
    resumed = verify(benchmark, out, "--shard", "0/2", "--resume")
    assert resumed.exit_code == 0, resumed.output
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [record["index"] for record in records] == [0, 2, 4]
    assert records[0]["message"] == "kept from the first run"  # not verified again
    assert [r.verdict for r in read_log(out)] == ["sat", "unsat", "unsat", "sat", "unsat"]
