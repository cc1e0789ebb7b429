"""The training loop on real MNIST (small subsets): exact resume, NaN handling, bad input."""
import json

import pytest
import torch
from click.testing import CliRunner

from maar_plugin.cli import cli
from maar_plugin.errors import MaarError
from maar_plugin.objectives import LossTerms, Objective, register_objective
from maar_plugin.training.checkpoint import load_checkpoint
from maar_plugin.training.config import build_config
from maar_plugin.training.loop import train

SMALL = dict(
    dataset="mnist", model="mlp-256x2", objective="maar", objective_args={"base": "ibp", "lam": 0.5},
    eps=0.1, epochs=2, warmup_epochs=0, ramp_epochs=1, batch_size=128, train_count=384, eval_count=64,
    eval_pgd_steps=3, eval_crown_count=16, device="cpu", seed=3,
)


def _without_times(history):
    return [{k: v for k, v in record.items() if "seconds" not in k} for record in history]


class _Interrupt(Exception):
    pass


def test_resumed_run_reproduces_the_uninterrupted_run(tmp_path):
    config = build_config(None, SMALL)
    full = train(config, tmp_path / "full", show_progress=False, log=lambda line: None)

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/"):
            raise _Interrupt
    with pytest.raises(_Interrupt):
        train(config, tmp_path / "cut", show_progress=False, log=stop_after_first_epoch)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["epoch"] == 0
    resumed = train(None, tmp_path / "cut", resume=True, show_progress=False, log=lambda line: None)

    assert _without_times(resumed) == _without_times(full)
    assert full[1]["train_eps"] == pytest.approx(0.1)
    full_state = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    resumed_state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["model"]
    assert all(torch.equal(full_state[name], resumed_state[name]) for name in full_state)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert (tmp_path / "cut" / "metrics.png").stat().st_size > 1000


def test_metrics_are_consistent(tmp_path):
    history = train(build_config(None, {**SMALL, "epochs": 1}), tmp_path / "run", show_progress=False,
                    log=lambda line: None)
    record = history[0]
    assert record["ibp_verified"] <= record["pgd"] <= record["clean"] <= 100
    assert record["crown_verified"] <= record["clean"]
    assert 0 < record["train_eps"] < 0.1
    assert {"loss_total", "loss_maar_reg", "loss_lambda"} <= set(record)


@register_objective("test-nan-after-warmup")
class _NanAfterWarmup(Objective):
    """Cross-entropy during warm-up, NaN once ε > 0 (to exercise the loop's NaN guard)."""

    name = "test-nan-after-warmup"
    description = "test only"

    def __init__(self, model, info, **hyperparameters):
        self.model = model

    def loss(self, x, y, eps, progress):
        logits = self.model(x)
        total = torch.nn.functional.cross_entropy(logits, y)
        if eps > 0:
            total = total * float("nan")
        return LossTerms(total=total, logits=logits, parts={})


def test_nan_loss_stops_with_one_line_and_keeps_last_good_checkpoint(tmp_path):
    config = build_config(None, {**SMALL, "objective": "test-nan-after-warmup", "objective_args": {},
                                 "warmup_epochs": 1, "eval_crown_count": 0})
    with pytest.raises(MaarError, match="nan at epoch 2") as error:
        train(config, tmp_path / "run", show_progress=False, log=lambda line: None)
    assert "\n" not in str(error.value)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 0


def test_existing_run_is_not_overwritten_and_resume_needs_a_checkpoint(tmp_path):
    config = build_config(None, {**SMALL, "epochs": 1, "eval_crown_count": 0})
    train(config, tmp_path / "run", show_progress=False, log=lambda line: None)
    with pytest.raises(MaarError, match="already holds a run"):
        train(config, tmp_path / "run", show_progress=False, log=lambda line: None)
    with pytest.raises(MaarError, match="no checkpoint"):
        train(None, tmp_path / "empty", resume=True, show_progress=False)


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--model", "no-such-model"], "no-such-model"),
        (["--dataset", "imagenet"], "imagenet"),
        (["--objective", "no-such-objective"], "no-such-objective"),
        (["--eps", "1.5"], "--eps"),
        (["--data-dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
        (["-o", "lam"], "KEY=VALUE"),
    ],
)
def test_cli_bad_input_gives_one_line_and_nonzero_exit(tmp_path, arguments, message):
    result = CliRunner().invoke(cli, ["train", "--out", str(tmp_path / "run"), "--epochs", "1", "--no-progress",
                                      *arguments])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_refuses_an_unwritable_output_directory(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(cli, ["train", "--out", str(blocker / "run"), "--epochs", "1", "--no-progress"])
    assert result.exit_code == 1
    assert "cannot write" in result.output
