"""α,β-CROWN loading a run natively: ``maar export --abcrown-native`` writes a config whose ``Customized(...)``
entries name :mod:`maar_plugin.abcrown_loaders`. Here they are called exactly as α,β-CROWN calls them
(``load_model.Customized``, ``load_model.load_model``, ``loading.load_verification_dataset``,
``specifications.construct_vnnlib``); the real α,β-CROWN runs the config where ``MAAR_ABCROWN`` names a
checkout (``MAAR_ABCROWN_PYTHON``: its interpreter, which must be able to import maar_plugin's dependencies)."""
from __future__ import annotations

import ast
import functools
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

import maar_plugin
from helpers import REPO, pythonpath_with, write_fake_run
from maar_plugin.abcrown_loaders import trained_model, verification_dataset
from maar_plugin.cli import cli
from maar_plugin.data import load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.training.run_files import load_trained_model
from maar_plugin.verification import VerifyOptions
from maar_plugin.verification.abcrown.output import Banner, Outcome, parse_line, verdict_of
from maar_plugin.vnnlib import read_vnnlib

EPS = 0.1


def customized(expression: str) -> functools.partial:
    """What α,β-CROWN's ``eval`` of a ``Customized(def_file, callable_name, *args, **kwargs)`` entry returns, for
    the literal arguments our configs hold: the callable imported as ``custom.<def_file>``, else as
    ``<def_file>``, with the arguments bound."""
    call = ast.parse(expression, mode="eval").body
    assert isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "Customized"
    module_name, function, *args = [ast.literal_eval(argument) for argument in call.args]
    kwargs = {keyword.arg: ast.literal_eval(keyword.value) for keyword in call.keywords}
    try:
        module = importlib.import_module(f"custom.{module_name}")
    except ModuleNotFoundError:
        module = importlib.import_module(module_name)
    return functools.partial(getattr(module, function), *args, **kwargs)


def load_as_abcrown(config: dict) -> tuple[torch.nn.Module, list[int], torch.Tensor, torch.Tensor, torch.Tensor]:
    """The model, the example indices and the L∞ boxes (flat, normalised) and labels α,β-CROWN verifies."""
    model = customized(config["model"]["name"])()
    model.eval()
    specification = {"type": "lp", "norm": float("inf"), "rhs": 0.0, **config["specification"]}
    data = customized(config["data"]["dataset"])(specification)
    assert len(data) == 6                   # X, labels, data_max, data_min, eps, runnerup
    X, labels, data_max, data_min, eps, runnerup = data
    assert X.size(0) == labels.size(0) and (data_max - data_min).min() >= 0 and runnerup is None
    indices = list(range(X.shape[0]))
    if config["data"].get("data_idx_file"):
        indices = [int(line) for line in Path(config["data"]["data_idx_file"]).read_text().split()]
    indices = indices[config["data"]["start"]:config["data"]["end"]]
    lower = (X[indices] - eps).clamp(min=data_min).flatten(1)
    upper = (X[indices] + eps).clamp(max=data_max).flatten(1)
    return model, indices, lower, upper, labels[indices]


@pytest.fixture(scope="module")
def native_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("native")
    run_dir = root / "runs" / "dm"
    write_fake_run(run_dir, "dm-small")
    runner = CliRunner()
    for selection in ("first", "random"):
        result = runner.invoke(cli, ["export", str(run_dir), "--eps", str(EPS), "--count", "3", "--selection",
                                     selection, "--out", str(root / "models" / selection), "--abcrown-native",
                                     "--abcrown-device", "cpu", "--timeout", "30"])
        assert result.exit_code == 0, result.output
        assert "abcrown_native.yaml" in result.output
    return root, run_dir


@pytest.mark.parametrize("selection", ["first", "random"])
def test_the_loaders_give_the_run_and_the_exported_images_as_abcrown_expects(native_exports, selection):
    root, run_dir = native_exports
    spec_dir = root / "vnnlib_specs" / selection
    config = yaml.safe_load((spec_dir / "abcrown_native.yaml").read_text())
    manifest = json.loads((spec_dir / "export.json").read_text())
    assert "csv_name" not in config["general"] and config["specification"] == {"epsilon": EPS}
    model, indices, lower, upper, labels = load_as_abcrown(config)
    assert indices == manifest["test_indices"] and labels.tolist() == manifest["labels"]
    assert (indices == [0, 1, 2]) == (selection == "first")

    run_model, _, _ = load_trained_model(run_dir)
    normalize = run_model[0]
    mean, std = normalize.mean.flatten().tolist(), normalize.std.flatten().tolist()
    assert config["data"]["mean"] == mean and config["data"]["std"] == std and config["data"]["num_outputs"] == 10
    images, _ = load_dataset("mnist", "test")
    with torch.no_grad():
        # α,β-CROWN's network on its normalised inputs is the run's network on the pixels
        torch.testing.assert_close(model(lower.reshape(-1, 1, 28, 28)), run_model(lower.reshape(-1, 1, 28, 28) *
                                   normalize.std + normalize.mean), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model((images[indices] - normalize.mean) / normalize.std),
                                   run_model(images[indices]), atol=1e-5, rtol=1e-5)
    for position, index in enumerate(indices):
        # the box it verifies is the ε-ball of the VNN-LIB file, in normalised coordinates
        prop = read_vnnlib(spec_dir / f"img{index:05d}_eps{EPS:g}.vnnlib")
        np.testing.assert_allclose(lower[position].double().numpy() * std[0] + mean[0], prop.input_lower, atol=1e-6)
        np.testing.assert_allclose(upper[position].double().numpy() * std[0] + mean[0], prop.input_upper, atol=1e-6)


def test_the_dataset_loader_in_alpha_beta_crowns_format():
    X, labels, data_max, data_min, eps, runnerup = verification_dataset({"epsilon": 0.3}, "mnist")
    assert X.dtype == torch.float32 and X.shape == (10000, 1, 28, 28) and labels.dtype == torch.int64
    assert data_max.shape == data_min.shape == eps.shape == (1, 1, 1, 1) and runnerup is None
    assert eps.item() == pytest.approx(0.3 / 0.3081) and data_min.item() == pytest.approx(-0.1307 / 0.3081)
    images, expected = load_dataset("mnist", "test")
    assert torch.equal(labels, expected) and torch.allclose(X * 0.3081 + 0.1307, images, atol=1e-6)
    unnormalised = verification_dataset({"epsilon": 0.3}, "mnist", mean=[0.0], std=[1.0])
    assert torch.equal(unnormalised[0], images) and unnormalised[4].item() == pytest.approx(0.3)
    for spec, kwargs, message in [({"epsilon": None}, {}, "specification.epsilon"),
                                  ({"epsilon": 0.1}, {"mean": [0.1, 0.2]}, "one value per channel"),
                                  ({"epsilon": 0.1}, {"std": [0.0]}, "std > 0")]:
        with pytest.raises(MaarError, match=message):
            verification_dataset(spec, "mnist", **kwargs)


def test_the_model_loader_refuses_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(MaarError, match="is not a training run"):
        trained_model(str(tmp_path))


@pytest.mark.skipif(not os.environ.get("MAAR_ABCROWN"),
                    reason="set MAAR_ABCROWN to an α,β-CROWN checkout (and MAAR_ABCROWN_PYTHON to its interpreter)")
def test_real_abcrown_verifies_the_run_natively_as_our_cascade_does(tmp_path):
    """A freshly initialised dm-small on the first six test images at ε = 0.002: misclassified images and robust
    ones; α,β-CROWN, loading the run through the config, agrees with the Python API on every decided one."""
    run_dir = tmp_path / "runs" / "dm"
    model = write_fake_run(run_dir, "dm-small")
    count, eps = 6, 0.002
    exported = CliRunner().invoke(cli, ["export", str(run_dir), "--eps", str(eps), "--count", str(count),
                                        "--out", str(tmp_path / "models" / "dm"), "--abcrown-native",
                                        "--abcrown-device", "cpu", "--timeout", "60"])
    assert exported.exit_code == 0, exported.output
    complete_verifier = Path(os.environ["MAAR_ABCROWN"]) / "complete_verifier"
    python = os.environ.get("MAAR_ABCROWN_PYTHON") or sys.executable
    config = tmp_path / "vnnlib_specs" / "dm" / "abcrown_native.yaml"
    run = subprocess.run([python, "abcrown.py", "--config", str(config)], cwd=complete_verifier, capture_output=True,
                         text=True, timeout=1800, env={**os.environ, "PYTHONPATH": pythonpath_with(REPO)})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    verdicts, current = {}, None
    for line in run.stdout.splitlines():
        parsed = parse_line(line)
        if isinstance(parsed, Banner):
            current = parsed.index
        elif isinstance(parsed, Outcome):
            verdicts[current] = verdict_of(parsed.status, parsed.seconds, 60.0)
    assert sorted(verdicts) == list(range(count)), run.stdout[-3000:]
    images, labels = load_dataset("mnist", "test")
    ours = maar_plugin.certify(model, images[:count], labels[:count], eps, VerifyOptions(timeout=60, device="cpu"))
    decided = [i for i in range(count) if {verdicts[i], ours.verdicts[i]} <= {"sat", "unsat"}]
    assert [verdicts[i] for i in decided] == [ours.verdicts[i] for i in decided] and decided
    assert {"sat", "unsat"} <= {verdicts[i] for i in decided}
