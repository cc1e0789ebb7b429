"""Failures that explain themselves: tracebacks in the log, MAAR_DEBUG, auto_LiRPA's limits told from our
bugs, and a verifier whose α,β-CROWN side needs neither auto_LiRPA nor the LP solver."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from helpers import REPO, pythonpath_with, write_tiny_benchmark
from maar_plugin.bounds.lirpa import failed_inside_lirpa
from maar_plugin.cli import cli
from maar_plugin.verification import VerifyOptions, verify_instance
from maar_plugin.verification.run.cascade import Cascade


@pytest.fixture
def instance(tmp_path):
    specs = write_tiny_benchmark(tmp_path, ["never"])
    return specs.parent / "models" / "net.onnx", specs / "never.vnnlib"


def broken_centre_check(self):
    raise RuntimeError("a bug in the centre check")


def test_an_unexpected_failure_is_an_error_with_its_traceback_in_the_log(tmp_path, instance, monkeypatch):
    monkeypatch.setattr(Cascade, "try_centres", broken_centre_check)
    result = CliRunner().invoke(cli, ["verify", "--instances", str(instance[1].parent / "instances.csv"),
                                      "--out", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert record["verdict"] == "error" and record["message"] == "RuntimeError: a bug in the centre check"
    assert "Traceback" in record["traceback"] and "broken_centre_check" in record["traceback"]


def test_maar_debug_raises_instead_of_recording(instance, monkeypatch):
    monkeypatch.setattr(Cascade, "try_centres", broken_centre_check)
    monkeypatch.setenv("MAAR_DEBUG", "1")
    with pytest.raises(RuntimeError, match="a bug in the centre check"):
        verify_instance(*instance, options=VerifyOptions(timeout=10))


def test_a_single_instance_with_error_exits_1_with_or_without_out(tmp_path, instance, monkeypatch):
    monkeypatch.setattr(Cascade, "try_centres", broken_centre_check)
    for extra in ([], ["--out", str(tmp_path / "single")]):
        result = CliRunner().invoke(cli, ["verify", "--onnx", str(instance[0]), "--vnnlib", str(instance[1]), *extra])
        assert result.exit_code == 1 and "a bug in the centre check" in result.output, extra


def test_failures_inside_auto_lirpa_are_told_from_ours():
    from auto_LiRPA import PerturbationLpNorm

    with pytest.raises(TypeError) as inside:
        PerturbationLpNorm(norm=np.inf, eps=None).init(torch.zeros(2), forward=False)
    assert failed_inside_lirpa(inside.value)
    with pytest.raises(RuntimeError) as ours:
        broken_centre_check(None)
    assert not failed_inside_lirpa(ours.value)


def test_the_abcrown_side_imports_no_bound_or_lp_library():
    code = ("import sys; import maar_plugin.verification.abcrown.backend, maar_plugin.verification.abcrown.config; "
            "from maar_plugin.verification import read_abcrown_config, verify_instances, read_log, stage_table; "
            "print(sorted(m for m in ('auto_LiRPA', 'highspy', 'scipy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": pythonpath_with(REPO), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
