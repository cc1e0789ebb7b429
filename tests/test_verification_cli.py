"""`maar verify` / `maar report` end to end: result files, log, resume, α,β-CROWN configs."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from helpers import write_tiny_benchmark
from maar_plugin.cli import cli
from maar_plugin.cli_options import with_given
from maar_plugin.errors import MaarError
from maar_plugin.verification import VerifyOptions, read_abcrown_config, read_log

FAST_FLAGS = ["--pgd-steps", "5", "--pgd-restarts", "1", "--alpha-iterations", "3", "--no-progress"]


@pytest.fixture
def benchmark(tmp_path: Path) -> Path:
    """A spec folder like `maar export` writes: model, two properties, instances.csv."""
    return write_tiny_benchmark(tmp_path, ["always", "never"])


def test_verify_instances_writes_results_and_resumes(benchmark, tmp_path):
    runner = CliRunner()
    out = tmp_path / "results"
    first = runner.invoke(cli, ["verify", "--instances", str(benchmark / "instances.csv"), "--out", str(out),
                                *FAST_FLAGS])
    assert first.exit_code == 0, first.output
    assert (out / "results" / "net__never.txt").read_text() == "unsat\n"
    assert (out / "results" / "net__always.txt").read_text().startswith("sat\n((X_0 ")
    assert (out / "summary.csv").read_text().count("\n") == 3
    log_lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["verdict"] for line in log_lines] == ["sat", "unsat"]

    refused = runner.invoke(cli, ["verify", "--instances", str(benchmark / "instances.csv"), "--out", str(out),
                                  *FAST_FLAGS])
    assert refused.exit_code == 1 and "--resume" in refused.output

    (out / "log.jsonl").write_text(log_lines[0] + "\n" + log_lines[1][:20])  # killed while writing the 2nd
    resumed = runner.invoke(cli, ["verify", "--instances", str(benchmark / "instances.csv"), "--out", str(out),
                                  "--resume", *FAST_FLAGS])
    assert resumed.exit_code == 0, resumed.output
    assert [r.verdict for r in read_log(out)] == ["sat", "unsat"]

    report = runner.invoke(cli, ["report", str(out), "--instances"])
    assert report.exit_code == 0
    assert "net__never" in report.output and "unsat: 1" in report.output and "sat: 1" in report.output


def test_retry_open_verifies_only_open_instances_again(benchmark, tmp_path):
    """A csv timeout too short for any stage leaves `never` open; --resume --retry-open decides it with the
    longer timeout and leaves the decided instance's record alone."""
    csv = benchmark / "instances.csv"
    csv.write_text("../models/net.onnx,always.vnnlib,10\n../models/net.onnx,never.vnnlib,0.000001\n")
    runner, out = CliRunner(), tmp_path / "results"
    first = runner.invoke(cli, ["verify", "--instances", str(csv), "--out", str(out), *FAST_FLAGS])
    assert first.exit_code == 0, first.output
    assert [r.verdict for r in read_log(out)] == ["sat", "timeout"]
    retried = runner.invoke(cli, ["verify", "--instances", str(csv), "--out", str(out), "--resume",
                                  "--retry-open", "20", *FAST_FLAGS])
    assert retried.exit_code == 0, retried.output
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [(r["instance"], r["verdict"], r["timeout"]) for r in records] == [
        ("net__always", "sat", 10.0), ("net__never", "timeout", 0.000001), ("net__never", "unsat", 20.0)]
    assert [r.verdict for r in read_log(out)] == ["sat", "unsat"]
    assert (out / "results" / "net__never.txt").read_text() == "unsat\n"
    again = runner.invoke(cli, ["verify", "--instances", str(csv), "--out", str(out), "--resume",
                                "--retry-open", "20", *FAST_FLAGS])
    assert again.exit_code == 0 and len((out / "log.jsonl").read_text().splitlines()) == 3


def test_verify_jobs_splits_a_batch_over_processes_and_merges_it(benchmark, tmp_path):
    """Two local processes, one shard each: the same verdicts as one process, shard logs, a merged summary."""
    runner, csv = CliRunner(), str(benchmark / "instances.csv")
    one, two = tmp_path / "one", tmp_path / "two"
    single = runner.invoke(cli, ["verify", "--instances", csv, "--out", str(one), *FAST_FLAGS])
    split = runner.invoke(cli, ["verify", "--instances", csv, "--out", str(two), "--jobs", "2", *FAST_FLAGS])
    assert single.exit_code == 0 and split.exit_code == 0, split.output
    assert [(r.instance, r.verdict) for r in read_log(two)] == [(r.instance, r.verdict) for r in read_log(one)]
    assert sorted(path.name for path in two.glob("log*.jsonl")) == ["log.shard-0-of-2.jsonl", "log.shard-1-of-2.jsonl"]
    assert (two / "summary.csv").read_text().count("\n") == 3
    assert "log.shard-K-of-2.jsonl" in split.output
    refused = runner.invoke(cli, ["verify", "--instances", csv, "--out", str(two), "--jobs", "2", *FAST_FLAGS])
    assert refused.exit_code == 1 and "--resume" in refused.output


@pytest.mark.parametrize("extra", [["--onnx", "net.onnx", "--vnnlib", "p.vnnlib"],
                                   ["--instances", "x.csv", "--shard", "0/2"]])
def test_verify_jobs_needs_a_batch_without_shard(extra):
    result = CliRunner().invoke(cli, ["verify", *extra, "--jobs", "2"])
    assert result.exit_code == 1 and "--jobs splits a batch" in result.output


def test_verify_single_instance_prints_verdict(benchmark):
    result = CliRunner().invoke(cli, ["verify", "--onnx", str(benchmark.parent / "models" / "net.onnx"),
                                      "--vnnlib", str(benchmark / "never.vnnlib"), "--timeout", "10", *FAST_FLAGS])
    assert result.exit_code == 0, result.output
    assert "unsat" in result.output


def test_verify_needs_one_source():
    result = CliRunner().invoke(cli, ["verify", "--onnx", "x.onnx"])
    assert result.exit_code == 1 and "exactly one of" in result.output


def test_abcrown_config_maps_keys_and_warns(benchmark, tmp_path):
    config = tmp_path / "abcrown.yaml"
    config.write_text(yaml.safe_dump({
        "general": {"root_path": "${CONFIG_PATH}/specs", "csv_name": "instances.csv", "device": "cpu",
                    "complete_verifier": "bab"},
        "solver": {"batch_size": 64, "alpha-crown": {"iteration": 3}},
        "bab": {"timeout": 7, "branching": {"method": "kfsb", "reduceop": "max"}},
        "attack": {"pgd_restarts": 1},
        "specification": {"epsilon": 0.1},
    }))
    job = read_abcrown_config(config)
    assert len(job.instances) == 2 and job.instances[0].onnx.resolve() == (tmp_path / "models" / "net.onnx").resolve()
    assert job.options == {"timeout": 7, "device": "cpu", "alpha_iterations": 3, "pgd_restarts": 1,
                           "bab": {"batch_size": 64, "branching": "fsb"}}
    assert job.ignored_keys == ["bab.branching.reduceop", "specification.epsilon"]
    options = with_given(VerifyOptions(), job.options)
    given = (options.timeout, options.alpha_iterations, options.bab.batch_size, options.bab.branching)
    assert given == (7, 3, 64, "fsb")
    result = CliRunner().invoke(cli, ["verify", "--abcrown-config", str(config), "--out", str(tmp_path / "out"),
                                      "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "ignoring" in result.output and "bab.branching.reduceop" in result.output
    assert sorted(r.verdict for r in read_log(tmp_path / "out")) == ["sat", "unsat"]


@pytest.mark.parametrize("method, expected", [("babsr", "babsr"), ("fsb", "fsb"), ("kfsb", "fsb"),
                                              ("nonlinear", "intercept")])
def test_abcrown_branching_methods_map_to_ours_or_to_a_note(tmp_path, method, expected):
    config = tmp_path / "branching.yaml"
    config.write_text(yaml.safe_dump({"model": {"onnx_path": "net.onnx"}, "specification": {"vnnlib_path": "p.vnnlib"},
                                      "bab": {"branching": {"method": method}}}))
    job = read_abcrown_config(config)
    assert with_given(VerifyOptions(), job.options).bab.branching == expected
    assert bool(job.notes) == (method == "nonlinear")


def test_abcrown_customized_entries_are_refused(tmp_path):
    config = tmp_path / "custom.yaml"
    config.write_text("model:\n  name: Customized(\"custom_model_data\", \"mnist_6_100\")\n")
    result = CliRunner().invoke(cli, ["verify", "--abcrown-config", str(config)])
    assert result.exit_code == 1
    assert "Customized" in result.output and len(result.output.strip().splitlines()) == 1


def test_certified_by_counts_cumulatively():
    from maar_plugin.verification import InstanceResult, certified_by

    def result(verdict, stage):
        return InstanceResult("i", "n.onnx", "p.vnnlib", verdict, stage)

    results = [result("unsat", "IBP"), result("unsat", "CROWN"), result("unsat", "alpha-CROWN"),
               result("unsat", "BaB"), result("sat", "pgd"), result("timeout", None), result("unsat", "MILP")]
    stages = ("centre", "IBP", "CROWN", "pgd", "alpha-CROWN", "BaB", "MILP")   # MILP: logs of earlier versions
    assert [certified_by(results, stage) for stage in stages] == [0, 1, 2, 2, 3, 4, 5]


def test_abcrown_config_selects_csv_rows_with_data_start_and_end(benchmark, tmp_path):
    """As α,β-CROWN's VNN-COMP configs do (exp_configs/vnncomp22/mnistfc.yaml: rows 30 to 89)."""
    config = tmp_path / "rows.yaml"
    config.write_text(yaml.safe_dump({"general": {"root_path": str(benchmark), "csv_name": "instances.csv"},
                                      "data": {"start": 1, "end": 2}}))
    job = read_abcrown_config(config)
    assert [i.vnnlib.name for i in job.instances] == ["never.vnnlib"] and job.ignored_keys == []
    config.write_text(yaml.safe_dump({"general": {"root_path": str(benchmark), "csv_name": "instances.csv"},
                                      "data": {"start": 2}}))
    with pytest.raises(MaarError, match="select none of the 2 csv rows"):
        read_abcrown_config(config)
