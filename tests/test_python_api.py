"""The Python API (``maar_plugin.verify`` / ``certify`` on modules): the direct layer graph computes what the
module computes, its verdicts are those of ``maar verify`` on the files ``maar export`` writes for the same
model and points, and every counterexample violates the property when run through the module."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

import maar_plugin
from helpers import REPO, pythonpath_with, write_fake_run
from maar_plugin.cli import cli
from maar_plugin.data import load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.models import Normalize
from maar_plugin.verification import VerifyOptions, read_log, verify_instance
from maar_plugin.verification.network.module_import import module_graph
from maar_plugin.verification.network.onnx_import import load_onnx_graph
from maar_plugin.verification.spec import VerificationSpec
from maar_plugin.vnnlib import read_vnnlib

OPTIONS = VerifyOptions(timeout=10, pgd_steps=10, pgd_restarts=1, alpha_iterations=5, device="cpu")
OPTION_FLAGS = ["--timeout", "10", "--pgd-steps", "10", "--pgd-restarts", "1", "--alpha-iterations", "5",
                "--device", "cpu"]
# A freshly initialised mlp-256x2 (seed 0) on the first MNIST test images: at ε = 0.001 images 0, 1, 3, 4
# are misclassified (sat at the centre) and 2, 5 are proved; at ε = 0.01 PGD breaks image 2.
RADII = {0.001: 6, 0.01: 3}


def test_importing_the_package_stays_light_and_the_api_is_its_attributes():
    probe = "import sys, maar_plugin; print([m for m in ('torch', 'onnx', 'auto_LiRPA') if m in sys.modules])"
    output = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO,
                            env={"PYTHONPATH": pythonpath_with(REPO), "PATH": ""}).stdout
    assert output.strip() == "[]"
    import maar_plugin.api
    import maar_plugin.certification  # the module behind `maar certify` does not shadow the function

    assert maar_plugin.certify is maar_plugin.api.certify and maar_plugin.verify is maar_plugin.api.verify
    assert maar_plugin.VerificationSpec is VerificationSpec and maar_plugin.VerifyOptions is VerifyOptions


def _batchnorm_net() -> nn.Sequential:
    torch.manual_seed(1)
    model = nn.Sequential(
        Normalize((0.49, 0.48, 0.45), (0.2, 0.21, 0.22)),
        nn.Sequential(nn.Conv2d(3, 4, 3, padding="same", bias=False), nn.BatchNorm2d(4), nn.ReLU()),
        nn.AvgPool2d(2), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Tanh(), nn.Dropout(0.5), nn.Flatten(),
        nn.Linear(4 * 4 * 4, 16), nn.BatchNorm1d(16), nn.Sigmoid(), nn.Identity(), nn.Linear(16, 10))
    with torch.no_grad():
        for layer in model.modules():
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.2, 3)
                layer.weight.uniform_(0.5, 2)
                layer.bias.uniform_(-1, 1)
    return model


def _mnist_conv() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(Normalize((0.1307,), (0.3081,)), nn.Conv2d(1, 4, 4, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 13 * 13, 20), nn.ReLU(), nn.Linear(20, 10))


@pytest.mark.parametrize("build, shape", [(_batchnorm_net, (3, 16, 16)), (_mnist_conv, (1, 28, 28))])
def test_the_direct_layer_graph_computes_what_the_module_computes(build, shape):
    model = build().train()      # converted with eval-mode semantics, whatever mode the model is in
    graph = module_graph(model, shape)
    assert model.training and graph.example_shape == shape and graph.num_outputs == 10
    x = torch.rand(16, *shape)
    with torch.no_grad():
        torch.testing.assert_close(graph(x), model.eval()(x), atol=1e-5, rtol=1e-5)


def test_the_graph_of_a_registered_model_is_the_one_maar_export_gives(tmp_path):
    """Same modules with the same weights as the converter builds from the exported ONNX file."""
    from maar_plugin.export import export_onnx

    model = _mnist_conv().eval()
    export_onnx(tmp_path / "net.onnx", model, torch.rand(2, 1, 28, 28), {})
    direct, imported = module_graph(model, (1, 28, 28)), load_onnx_graph(tmp_path / "net.onnx")
    assert [type(layer) for layer in direct.layers] == [type(layer) for layer in imported.layers]
    for mine, theirs in zip(direct.layers, imported.layers):
        for (name, value), (other_name, other) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert name == other_name and torch.equal(value, other), name


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 13 * 13, 3)),
     r"unsupported module MaxPool2d \(layer 1"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.LeakyReLU(), nn.Linear(8, 3)), "unsupported module LeakyReLU"),
    (nn.Linear(784, 3), "must be an nn.Sequential"),
    (nn.Sequential(nn.Linear(28, 3)), r"flatten it first"),
    (nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.ReLU(), nn.BatchNorm1d(8)), r"BatchNorm1d\) follows ReLU"),
    (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="reflect")), "padding_mode='reflect'"),
])
def test_an_unsupported_model_is_a_one_line_error(model, message):
    spec = VerificationSpec(torch.zeros(1, 28, 28), torch.ones(1, 28, 28), [([[1.0, -1.0, 0.0]], [0.0])])
    with pytest.raises(MaarError, match=message) as error:
        maar_plugin.verify(model, spec, OPTIONS)
    assert "\n" not in str(error.value)


def test_a_spec_of_the_wrong_shape_is_refused():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(MaarError, match=r"layer 1 \(Linear\) cannot read an input of shape \(5,\)"):
        maar_plugin.verify(model, VerificationSpec(torch.zeros(5), torch.ones(5), [([[1, -1, 0]], [0])]), OPTIONS)
    with pytest.raises(MaarError, match=r"the spec is for inputs \(4,\) and 2 outputs; the model takes \(4,\) and "
                                        "gives 3"):
        maar_plugin.verify(model, VerificationSpec(torch.zeros(4), torch.ones(4), [([[1, -1]], [0])]), OPTIONS)
    with pytest.raises(MaarError, match="lower <= upper"):
        VerificationSpec(torch.ones(4), torch.zeros(4), [([[1, -1, 0]], [0])])
    with pytest.raises(MaarError, match=r"C must be \[rows, outputs\]"):
        VerificationSpec(torch.zeros(4), torch.ones(4), [([[1, -1, 0]], [0, 1])])


def _vnnlib_text(spec: VerificationSpec) -> str:
    """The spec as a VNN-LIB file (inputs and outputs declared, box asserts, one ``or`` of ``and``s)."""
    lower, upper = spec.lower.reshape(-1), spec.upper.reshape(-1)
    lines = [f"(declare-const X_{i} Real)" for i in range(len(lower))]
    lines += [f"(declare-const Y_{j} Real)" for j in range(spec.num_outputs)]
    for i, (low, high) in enumerate(zip(lower, upper)):
        lines += [f"(assert (>= X_{i} {float(low)!r}))", f"(assert (<= X_{i} {float(high)!r}))"]
    conjunctions = []
    for C, d in spec.unsafe:
        rows = [" ".join(f"(* {float(c)!r} Y_{j})" for j, c in enumerate(row)) for row in C]
        conjunctions.append("(and " + " ".join(f"(<= (+ {row}) {float(b)!r})" for row, b in zip(rows, d)) + ")")
    return "\n".join([*lines, f"(assert (or {' '.join(conjunctions)}))", ""])


def test_verify_decides_a_general_spec_as_maar_verify_does_on_its_files(tmp_path):
    """A 2-input network, whose inputs branch and bound splits: one region the box reaches (sat), one it
    cannot reach (unsat); the same verdicts from the ONNX file and VNN-LIB text of each spec."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 2))
    torch.onnx.export(model, (torch.zeros(1, 2),), str(tmp_path / "net.onnx"), input_names=["x"], dynamo=False)
    grid = torch.cartesian_prod(torch.linspace(-1, 1, 201), torch.linspace(-1, 1, 201))
    with torch.no_grad():
        difference = model(grid) @ torch.tensor([1.0, -1.0])
    lowest = float(difference.min())
    box = (-torch.ones(2), torch.ones(2))
    specs = {"sat": VerificationSpec(*box, [([[1.0, -1.0]], [lowest + 1e-3])]),
             "unsat": VerificationSpec(*box, [([[1.0, -1.0]], [lowest - 0.5]), ([[-1.0, 1.0]], [-abs(lowest) - 1e3])])}
    for expected, spec in specs.items():
        result = maar_plugin.verify(model, spec, OPTIONS)
        (tmp_path / f"{expected}.vnnlib").write_text(_vnnlib_text(spec))
        from_files = verify_instance(tmp_path / "net.onnx", tmp_path / f"{expected}.vnnlib", options=OPTIONS)
        assert result.verdict == from_files.verdict == expected, (result.details.message, from_files.message)
        if expected == "sat":
            _check_counterexample(model, spec, result)
        else:
            assert result.counterexample is None and result.output is None


def _check_counterexample(model: nn.Module, spec: VerificationSpec, result) -> None:
    """In the box, and the module's output there (recomputed here) lies in the unsafe region."""
    x = result.counterexample
    assert x.shape == spec.input_shape and x.dtype == torch.float32
    assert (x.double().numpy() >= spec.lower).all() and (x.double().numpy() <= spec.upper).all()
    with torch.no_grad():
        y = model.eval()(x[None])[0]
    assert torch.equal(y, result.output) and spec.violated_by(y)


@pytest.fixture(scope="module")
def exported_and_verified(tmp_path_factory):
    """A fake run exported with `maar export` at each radius of RADII and verified with `maar verify`."""
    root = tmp_path_factory.mktemp("api")
    model = write_fake_run(root / "runs" / "mlp")
    runner = CliRunner()
    verified = {}
    for eps, count in RADII.items():
        name = f"mlp-eps{eps:g}"
        exported = runner.invoke(cli, ["export", str(root / "runs" / "mlp"), "--eps", str(eps), "--count", str(count),
                                       "--out", str(root / "models" / name), "--timeout", "10"])
        assert exported.exit_code == 0, exported.output
        csv_path = root / "vnnlib_specs" / name / "instances.csv"
        run = runner.invoke(cli, ["verify", "--instances", str(csv_path), "--out", str(root / "results" / name),
                                  "--no-progress", *OPTION_FLAGS])
        assert run.exit_code == 0, run.output
        verified[eps] = (root / "vnnlib_specs" / name, read_log(root / "results" / name))
    return model, verified


@pytest.mark.parametrize("eps", RADII)
def test_certify_gives_the_verdicts_of_maar_verify_on_the_exported_files(exported_and_verified, eps):
    model, verified = exported_and_verified
    spec_dir, from_files = verified[eps]
    images, labels = load_dataset("mnist", "test")
    count = RADII[eps]
    certification = maar_plugin.certify(model.train(), images[:count], labels[:count], eps, OPTIONS)
    assert model.training                          # the model's mode is restored
    assert certification.verdicts == [r.verdict for r in from_files]
    assert {"sat", "unsat"} & set(certification.verdicts)
    with torch.no_grad():
        correct = (model.eval()(images[:count]).argmax(1) == labels[:count]).double().mean().item()
    assert certification.clean_accuracy == pytest.approx(100 * correct)
    unsat = certification.verdicts.count("unsat")
    assert certification.certified_accuracy == pytest.approx(100 * unsat / count)
    assert unsat + certification.falsified + certification.open == count
    for index, result in enumerate(certification.results):
        spec = VerificationSpec.robustness(images[index], int(labels[index]), eps, 10)
        prop = read_vnnlib(spec_dir / f"img{index:05d}_eps{eps:g}.vnnlib")
        assert np.array_equal(spec.lower.reshape(-1), prop.input_lower)
        assert np.array_equal(spec.upper.reshape(-1), prop.input_upper)
        assert all(np.array_equal(C, c.coefficients) and np.array_equal(d, c.bounds)
                   for (C, d), c in zip(spec.unsafe, prop.unsafe))
        if result.verdict == "sat":
            _check_counterexample(model, spec, result)
    assert "complete-cert." in certification.table()


def test_verdicts_cover_sat_and_unsat(exported_and_verified):
    _, verified = exported_and_verified
    verdicts = [r.verdict for _, results in verified.values() for r in results]
    stages = {r.stage for _, results in verified.values() for r in results if r.verdict == "sat"}
    assert "unsat" in verdicts and {"centre", "pgd"} <= stages
