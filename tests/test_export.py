"""Export: BatchNorm folding, ONNX equivalence, the benchmark layout of export_run, and bad input."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
import yaml
from click.testing import CliRunner
from torch import nn

import maar_plugin
from maar_plugin.cli import cli
from maar_plugin.data import dataset_info, load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.export import check_onnx, export_onnx, export_run, fold_batchnorm, write_abcrown_config_only
from maar_plugin.models import Normalize, create_model
from maar_plugin.vnnlib import read_vnnlib


def batchnorm_net(seed: int = 0) -> nn.Sequential:
    """A small MNIST-shaped net with both BatchNorm kinds, random statistics and affine parameters."""
    torch.manual_seed(seed)
    model = nn.Sequential(Normalize((0.1307,), (0.3081,)), nn.Conv2d(1, 4, 4, stride=2, bias=False),
                          nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 13 * 13, 16), nn.BatchNorm1d(16),
                          nn.ReLU(), nn.Linear(16, 10))
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
                layer.running_mean.uniform_(-1, 1)
                layer.running_var.uniform_(0.2, 3)
                layer.weight.uniform_(0.5, 2)
                layer.bias.uniform_(-1, 1)
    return model.eval()


def test_fold_batchnorm_computes_the_same_function():
    model = batchnorm_net()
    model.train()  # folding must use eval-mode statistics whatever mode the model is in
    folded = fold_batchnorm(model)
    assert not any(isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)) for layer in folded)
    assert sum(isinstance(layer, nn.BatchNorm2d) for layer in model) == 1 and model.training  # input untouched
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
        got = folded(x)
    assert not folded.training and len(folded) == len(model) - 2
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_rejects_an_unfoldable_position():
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.BatchNorm1d(4))
    with pytest.raises(MaarError, match=r"layer 2 \(BatchNorm1d\) follows ReLU"):
        fold_batchnorm(model)


def test_normalization_as_conv_matches_normalize():
    from maar_plugin.export.onnx_export import normalization_as_conv

    layer = Normalize((0.49, 0.48, 0.45), (0.2, 0.21, 0.22))
    conv = normalization_as_conv(layer)
    x = torch.rand(4, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(conv(x), layer(x), atol=1e-6, rtol=1e-6)
    assert conv.groups == 3 and conv.kernel_size == (1, 1)


def test_onnx_export_matches_torch(tmp_path):
    model = batchnorm_net()
    images = torch.rand(8, 1, 28, 28)
    path = tmp_path / "net.onnx"
    check = export_onnx(path, model, images, {"eps": "0.3", "objective": "ibp"})
    assert check.images == 8 and check.onnxruntime <= 1e-4 and check.onnx2torch <= 1e-4

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    assert {p.key: p.value for p in graph.metadata_props} == {"eps": "0.3", "objective": "ibp"}
    ops = [node.op_type for node in graph.graph.node]
    assert ops == ["Conv", "Conv", "Relu", "Flatten", "Gemm", "Relu", "Gemm"]  # Normalize as a 1x1 Conv, BN folded
    normalize = graph.graph.node[0]
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in normalize.attribute}
    assert attributes["kernel_shape"] == [1, 1] and attributes["group"] == 1
    (graph_input,), (graph_output,) = graph.graph.input, graph.graph.output
    assert graph_input.name == "input" and graph_output.name == "output"
    assert [d.dim_value for d in graph_input.type.tensor_type.shape.dim] == [1, 1, 28, 28]

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    fresh = torch.rand(3, 1, 28, 28)  # images the export itself never checked
    with torch.no_grad():
        expected = model(fresh).numpy()
    got = np.concatenate([session.run(["output"], {"input": image[None].numpy()})[0] for image in fresh])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_onnx_check_detects_a_different_model():
    from maar_plugin.export import onnx_bytes

    data = onnx_bytes(batchnorm_net(0), (1, 28, 28), {})
    with pytest.raises(MaarError, match="ONNX export differs from the torch model through onnxruntime"):
        check_onnx(data, batchnorm_net(1), torch.rand(2, 1, 28, 28))


# ---- export_run on a fake training run (a freshly initialised dm-small; nothing is trained) ----

def make_run(root: Path, model_name: str = "dm-small", checkpoint_model: str | None = None) -> Path:
    run_dir = root / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    torch.manual_seed(0)
    model = create_model(checkpoint_model or model_name, dataset_info("mnist"))
    torch.save({"model": model.state_dict(), "epoch": 3}, run_dir / "checkpoint.pt")
    config = {"dataset": "mnist", "model": model_name, "objective": "maar", "eps": 0.3, "data_dir": None, "seed": 0}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run_dir = make_run(root)
    summary = export_run(run_dir, 0.1, 4, root / "models" / "tiny", timeout=30)
    return root, run_dir, summary


def test_export_run_writes_the_benchmark_layout(exported):
    root, run_dir, summary = exported
    spec_dir = root / "vnnlib_specs" / "tiny"
    assert summary.paths.onnx == root / "models" / "tiny.onnx" and summary.paths.spec_dir == spec_dir
    names = sorted(p.name for p in spec_dir.iterdir())
    assert names == ["abcrown.yaml", "export.json", "img00000_eps0.1.vnnlib", "img00001_eps0.1.vnnlib",
                     "img00002_eps0.1.vnnlib", "img00003_eps0.1.vnnlib", "instances.csv"]

    rows = list(csv.reader((spec_dir / "instances.csv").open()))
    assert len(rows) == 4 and all(len(row) == 3 and row[2] == "30" for row in rows)
    assert all((spec_dir / row[0]).resolve() == summary.paths.onnx.resolve() for row in rows)

    manifest = json.loads((spec_dir / "export.json").read_text())
    assert manifest["test_indices"] == [0, 1, 2, 3] and manifest["eps"] == "0.1"
    graph = onnx.load(str(summary.paths.onnx))
    props = {p.key: p.value for p in graph.metadata_props}
    assert props["objective"] == "maar" and props["dataset"] == "mnist" and props["eps"] == "0.1"
    assert props["run_dir"] == str(run_dir.resolve()) and props["maar_plugin_version"] == maar_plugin.__version__

    images, labels = load_dataset("mnist", "test")
    session = onnxruntime.InferenceSession(str(summary.paths.onnx), providers=["CPUExecutionProvider"])
    for row, index, prediction in zip(rows, manifest["test_indices"], manifest["predictions"]):
        label = int(labels[index])
        prop = read_vnnlib(spec_dir / row[1], num_inputs=784, num_outputs=10)
        image = images[index].numpy().reshape(-1)
        assert prop.comments["label"] == str(label) and prop.comments["test_index"] == str(index)
        assert np.all(prop.input_lower <= image) and np.all(image <= prop.input_upper)
        assert np.all(prop.input_upper - prop.input_lower <= 0.2 + 1e-6)
        logits = session.run(["output"], {"input": images[index][None].numpy()})[0][0]
        assert int(np.argmax(logits)) == prediction
        # a misclassified image is itself a counterexample to its own property
        assert prop.violated_by(logits) == (prediction != label)


def test_abcrown_config_is_valid_yaml_for_csv_mode(exported):
    _, _, summary = exported
    config = yaml.safe_load((summary.paths.spec_dir / "abcrown.yaml").read_text())
    assert config["general"]["root_path"] == "${CONFIG_PATH}" and config["general"]["csv_name"] == "instances.csv"
    assert config["general"]["device"] == "cuda" and config["bab"]["timeout"] == 30
    assert config["model"]["input_shape"] == [-1, 1, 28, 28]


def test_existing_output_is_refused_then_forced(exported, tmp_path):
    root, run_dir, summary = exported
    with pytest.raises(MaarError, match=r"tiny\.onnx exists; use --force"):
        export_run(run_dir, 0.1, 2, root / "models" / "tiny")
    with pytest.raises(MaarError, match=r"instances\.csv exists; use --force"):
        write_abcrown_config_only(root / "models" / "tiny")
    paths = write_abcrown_config_only(root / "models" / "tiny", timeout=7, force=True, device="cpu")
    config = yaml.safe_load((paths.spec_dir / "abcrown.yaml").read_text())
    assert config["general"]["device"] == "cpu"
    assert len((paths.spec_dir / "instances.csv").read_text().splitlines()) == 4

    other = tmp_path / "models" / "forced"
    other_specs = tmp_path / "specs" / "forced"
    other_specs.mkdir(parents=True)
    (other_specs / "stale_eps0.5.vnnlib").write_text("stale")
    (other_specs / "notes.txt").write_text("kept")
    with pytest.raises(MaarError, match="is not empty; use --force"):
        export_run(run_dir, 0.2, 2, other, specs_dir=tmp_path / "specs")
    summary = export_run(run_dir, 0.2, 3, other, selection="random", seed=5, specs_dir=tmp_path / "specs", force=True)
    names = sorted(p.name for p in other_specs.glob("*.vnnlib"))
    manifest = json.loads((other_specs / "export.json").read_text())
    assert len(names) == 3 and "stale_eps0.5.vnnlib" not in names and (other_specs / "notes.txt").exists()
    expected = sorted(np.random.default_rng(5).choice(10000, 3, replace=False).tolist())
    assert manifest["test_indices"] == expected and summary.instances == 3


@pytest.mark.parametrize("kwargs, message", [
    ({"eps": 0.0}, r"--eps must be in \(0, 1\]"),
    ({"eps": 1.5}, r"--eps must be in \(0, 1\]"),
    ({"count": 0}, "--count must be at least 1"),
    ({"count": 10001}, r"--count 10001 is larger than the mnist test set \(10000 images\)"),
    ({"selection": "best"}, "--selection must be one of first, random"),
    ({"timeout": 0}, "--timeout must be positive"),
])
def test_bad_options(exported, tmp_path, kwargs, message):
    _, run_dir, _ = exported
    arguments = {"eps": 0.1, "count": 2, **kwargs}
    with pytest.raises(MaarError, match=message):
        export_run(run_dir, out=tmp_path / "models" / "x", **arguments)
    assert not (tmp_path / "models").exists()


def test_bad_run_directories(tmp_path):
    with pytest.raises(MaarError, match="unknown run directory"):
        export_run(tmp_path / "nope", 0.1, 2, tmp_path / "models" / "x")
    with pytest.raises(MaarError, match=r"is not a training run \(no config.json\)"):
        export_run(tmp_path, 0.1, 2, tmp_path / "models" / "x")
    run_dir = make_run(tmp_path, model_name="dm-small", checkpoint_model="mlp-256x2")
    with pytest.raises(MaarError, match="checkpoint does not match model dm-small"):
        export_run(run_dir, 0.1, 2, tmp_path / "models" / "x")
    assert not (tmp_path / "models").exists()


def test_cli_export(exported, tmp_path):
    _, run_dir, _ = exported
    runner = CliRunner()
    result = runner.invoke(cli, ["export", str(run_dir), "--eps", "0.05", "--count", "2",
                                 "--out", str(tmp_path / "models" / "cli"), "--abcrown-device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "ONNX check on 2 test images" in result.output
    assert (tmp_path / "vnnlib_specs" / "cli" / "abcrown.yaml").exists()
    result = runner.invoke(cli, ["export", str(run_dir), "--eps", "2", "--count", "2", "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and result.output.strip() == "Error: --eps must be in (0, 1] (pixel space), got 2.0"
    result = runner.invoke(cli, ["export", "--out", str(tmp_path / "m")])
    assert result.exit_code == 1 and "needs RUN_DIR, --eps and --count" in result.output
