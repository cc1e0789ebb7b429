"""One meaning per flag across the `maar` subcommands and one default per hyperparameter, kept by a test each."""
from __future__ import annotations

import json

import click
import pytest
from click.testing import CliRunner

from helpers import write_tiny_benchmark
from maar_plugin.cli import cli
from maar_plugin.demo import DEMO_TRAINING
from maar_plugin.objectives import objective_hyperparameters
from maar_plugin.training.recipe import load_recipe, recipe_names

FAST_FLAGS = ["--pgd-steps", "5", "--pgd-restarts", "1", "--alpha-iterations", "3", "--no-progress"]
COMPUTING = ("train", "evaluate", "verify", "certify", "reproduce")  # commands that compute on a device


def _option(command: str, flag: str) -> click.Option | None:
    found = [p for p in cli.commands[command].params if isinstance(p, click.Option) and flag in p.opts]
    return found[0] if found else None


def _visible_commands_with(flag: str) -> set[str]:
    return {name for name in cli.commands if (option := _option(name, flag)) is not None and not option.hidden}


@pytest.fixture
def benchmark(tmp_path):
    return write_tiny_benchmark(tmp_path, ["always", "never"])


def test_device_is_where_the_command_computes():
    assert _visible_commands_with("--device") == set(COMPUTING)
    for name in COMPUTING:
        option = _option(name, "--device")
        assert option is not None and "auto" in (option.help or "") and "cuda" in (option.help or ""), name
    assert _option("export", "--abcrown-device") is not None  # the device written into α,β-CROWN's YAML


def test_bad_device_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", str(tmp_path), "--device", "tpu"])
    assert result.exit_code == 1 and result.output.strip().splitlines() == [
        "Error: --device must be auto, cpu, cuda or cuda:N, got 'tpu'"]


def test_config_and_instances_have_one_meaning_each():
    assert _visible_commands_with("--config") == {"train"}  # a YAML of training options
    assert _visible_commands_with("--abcrown-config") == {"verify"}
    assert _visible_commands_with("--instances") == {"verify"}  # an instances.csv
    instances = _option("verify", "--instances")
    assert instances is not None and isinstance(instances.type, click.Path)
    old_name = _option("report", "--instances")
    assert old_name is not None and old_name.hidden and old_name.is_flag


def test_verifier_is_builtin_or_abcrown_and_reads_the_old_name(benchmark, tmp_path):
    option = _option("verify", "--verifier")
    assert option is not None and list(option.type.choices) == ["builtin", "abcrown"]
    out = tmp_path / "results"
    result = CliRunner().invoke(cli, ["verify", "--instances", str(benchmark / "instances.csv"), "--out", str(out),
                                      "--verifier", "maar", *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["verdict"] for line in (out / "log.jsonl").read_text().splitlines()] == ["sat", "unsat"]


def test_maar_weighting_has_one_default_which_the_recipes_and_demo_use():
    default = objective_hyperparameters("maar")["weighting"][0]
    assert default == "soft"
    for name in recipe_names():
        for scale in ("full", "cpu"):
            arguments = load_recipe(name, scale).training.get("objective_args") or {}
            assert arguments.get("weighting", default) == default, (name, scale)
    assert DEMO_TRAINING["objective_args"].get("weighting", default) == default


def _verified(csv, out, *flags: str) -> list[dict]:
    """The log records of `maar verify --instances CSV --out OUT FLAGS` (which must succeed)."""
    result = CliRunner().invoke(cli, ["verify", "--instances", str(csv), "--out", str(out), *flags, *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_verify_timeout_overrides_the_csv(benchmark, tmp_path):
    """The csv's timeout (1 µs) leaves `never` open; --timeout replaces it for every instance."""
    csv = benchmark / "instances.csv"
    csv.write_text("../models/net.onnx,always.vnnlib,0.000001\n../models/net.onnx,never.vnnlib,0.000001\n")
    records = _verified(csv, tmp_path / "results", "--timeout", "20")
    assert [(r["verdict"], r["timeout"]) for r in records] == [("sat", 20.0), ("unsat", 20.0)]


def test_retry_open_zero_means_no_second_pass(benchmark, tmp_path):
    csv = benchmark / "instances.csv"
    csv.write_text("../models/net.onnx,never.vnnlib,0.000001\n")
    assert [r["verdict"] for r in _verified(csv, tmp_path / "results", "--retry-open", "0")] == ["timeout"]
    for command in (["verify", "--instances", str(csv)], ["certify", str(tmp_path), "--eps", "0.1"],
                    ["reproduce", "--recipe", "mnist-eps0.1-dm-small"]):  # refused before any work starts
        negative = CliRunner().invoke(cli, [*command, "--out", str(tmp_path / "other"), "--retry-open", "-1"])
        assert negative.exit_code == 2 and "must be 0 (no retry)" in negative.output, negative.output
        assert not (tmp_path / "other").exists()


def test_reproduce_takes_a_setting_or_a_recipe(tmp_path):
    both = CliRunner().invoke(cli, ["reproduce", "mnist-eps0.1", "--recipe", "mnist-eps0.1-dm-small",
                                    "--out", str(tmp_path / "x")])
    assert both.exit_code == 1 and "not both" in both.output
    recipe_only = CliRunner().invoke(cli, ["reproduce", "--recipe", "no-such-recipe", "--out", str(tmp_path / "y")])
    assert recipe_only.exit_code == 1 and "no-such-recipe" in recipe_only.output
    assert "not both" not in recipe_only.output
