"""Data-parallel training under torchrun (2 gloo ranks on the CPU) against the one-process run."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import pythonpath_with
from maar_plugin.training.checkpoint import load_checkpoint
from maar_plugin.training.config import build_config
from maar_plugin.training.distributed import Ranks, batch_share
from maar_plugin.training.loop import train

ROOT = Path(__file__).resolve().parents[1]
# 197 images in batches of 64: three full batches and one of 5, split 3 + 2 over two ranks.
TINY = dict(
    dataset="mnist", model="mlp-256x2", eps=0.1, epochs=1, warmup_epochs=0, ramp_epochs=1, batch_size=64,
    train_count=197, eval_count=16, eval_pgd_steps=1, eval_crown_count=0, device="cpu", seed=5, lr=1e-3,
)
OBJECTIVES = {"natural": {}, "ibp": {}, "maar-ibp": {"lam": 0.5}, "crown-ibp": {}}


def _flags(options: dict) -> list[str]:
    flags = []
    for key, value in options.items():
        if key == "objective_args":
            flags += [part for name, argument in value.items() for part in ("-o", f"{name}={argument}")]
        else:
            flags += ["--" + key.replace("_", "-"), str(value)]
    return flags


def _torchrun(arguments: list[str], entry: tuple[str, ...] = ("-m", "maar_plugin")) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath_with(ROOT)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               *entry, "train", "--no-progress", *arguments]
    process = subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, cwd=ROOT, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the launcher and its ranks
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def _train_in_process(options: dict, run_dir: Path) -> list[dict]:
    return train(build_config(None, options), run_dir, show_progress=False, log=lambda line: None)


def _weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoint.pt")["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _weights(a), _weights(b)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-4, atol=1e-5, msg=name)


def _extend_to(run_dir: Path, epochs: int) -> None:
    """Raise a finished run's epoch count, so --resume trains on (the schedules do not depend on it)."""
    path = run_dir / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "epochs": epochs}))


def test_the_shares_of_the_ranks_make_up_the_batch():
    indices = torch.arange(10, 15)
    for world_size in (2, 3, 5, 7):
        shares = [batch_share(indices, Ranks(rank, world_size)) for rank in range(world_size)]
        assert torch.equal(torch.cat([share for share, weight in shares if weight > 0]), indices)
        assert sum(weight for _, weight in shares) == pytest.approx(1.0)
        assert all(len(share) == 1 for share, weight in shares if weight == 0)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_two_ranks_reach_the_weights_of_one_process(tmp_path, objective):
    options = {**TINY, "objective": objective, "objective_args": OBJECTIVES[objective]}
    single = _train_in_process(options, tmp_path / "one")
    result = _torchrun(["--out", str(tmp_path / "two"), *_flags(options)])
    assert result.returncode == 0, result.stderr[-2000:]
    _assert_same_weights(tmp_path / "one", tmp_path / "two")
    [record] = [json.loads(line) for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert record["world_size"] == 2 and single[0]["world_size"] == 1
    assert record["loss_total"] == pytest.approx(single[0]["loss_total"], rel=1e-4)
    assert record["train_accuracy"] == single[0]["train_accuracy"]
    assert result.stdout.count("epoch 1/1") == 1  # rank 0 alone prints


def test_resume_across_world_sizes(tmp_path):
    options = {**TINY, "objective": "ibp", "objective_args": {}, "ramp_epochs": 2}
    _train_in_process({**options, "epochs": 2}, tmp_path / "reference")

    result = _torchrun(["--out", str(tmp_path / "two-then-one"), *_flags(options)])
    assert result.returncode == 0, result.stderr[-2000:]
    _extend_to(tmp_path / "two-then-one", 2)
    resumed = train(None, tmp_path / "two-then-one", resume=True, show_progress=False, log=lambda line: None)
    assert [record["world_size"] for record in resumed] == [2, 1]
    _assert_same_weights(tmp_path / "reference", tmp_path / "two-then-one")

    _train_in_process(options, tmp_path / "one-then-two")
    _extend_to(tmp_path / "one-then-two", 2)
    result = _torchrun(["--out", str(tmp_path / "one-then-two"), "--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert "resuming" in result.stdout
    _assert_same_weights(tmp_path / "reference", tmp_path / "one-then-two")


def test_nan_on_one_rank_stops_every_rank_with_one_message(tmp_path):
    options = {**TINY, "objective": "test-nan-on-rank-1", "warmup_epochs": 1, "epochs": 2}
    result = _torchrun(["--out", str(tmp_path / "run"), *_flags(options)],
                       entry=(str(ROOT / "tests" / "distributed_nan_entry.py"),))
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert output.count("loss became nan at epoch 2") == 1
    assert "maar_plugin/" not in output  # no traceback through our code (torchrun adds its own summary)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 0


def test_batchnorm_running_means_are_averaged_over_the_ranks(tmp_path):
    # One step of 16 images, 8 per rank: the first BatchNorm sees the same inputs as in one process, so
    # the average of the ranks' running means is the one-process running mean (rank 0's alone is not).
    options = {**TINY, "model": "cnn7", "objective": "natural", "objective_args": {}, "batch_size": 16,
               "train_count": 16, "eval_count": 4}
    _train_in_process(options, tmp_path / "one")
    result = _torchrun(["--out", str(tmp_path / "two"), *_flags(options)])
    assert result.returncode == 0, result.stderr[-2000:]
    single, ranks = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    first = next(name for name in single if name.endswith("running_mean"))
    torch.testing.assert_close(ranks[first], single[first], rtol=1e-5, atol=1e-6)
