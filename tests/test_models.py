"""Model registry, the built-in architectures, Normalize's ONNX form and auto_LiRPA tracing."""
import importlib.metadata
import io
import sys
import textwrap

import onnx
import pytest
import torch
from torch import nn

from maar_plugin.bounds.lirpa import (  # auto_LiRPA's names, patched
    BoundedModule,
    BoundedTensor,
    LirpaBounds,
    PerturbationLpNorm,
    split_leading_normalize,
)
from maar_plugin.data import dataset_info
from maar_plugin.errors import MaarError
from maar_plugin.models import Normalize, create_model, list_models, model_descriptions, register_model, registry

BUILT_IN = ["cnn7", "dm-large", "dm-medium", "dm-small", "mlp-256x2"]
DATASETS = ["mnist", "cifar10"]


def layer_spec(model):
    """(type, out, kernel, stride, padding) of each conv/linear layer, plus BN and ReLU markers."""
    spec = []
    for layer in model:
        if isinstance(layer, nn.Conv2d):
            spec.append(("conv", layer.out_channels, layer.kernel_size[0], layer.stride[0], layer.padding[0]))
        elif isinstance(layer, nn.Linear):
            spec.append(("fc", layer.out_features))
        elif isinstance(layer, (nn.BatchNorm1d, nn.BatchNorm2d)):
            spec.append("bn")
        elif isinstance(layer, nn.ReLU):
            spec.append("relu")
    return spec


def test_built_in_models_are_registered_with_one_line_descriptions():
    assert set(BUILT_IN) <= set(list_models())
    descriptions = model_descriptions()
    for name in BUILT_IN:
        assert descriptions[name] and "\n" not in descriptions[name]


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", BUILT_IN)
def test_models_start_with_normalize_and_map_images_to_class_scores(name, dataset):
    info = dataset_info(dataset)
    model = create_model(name, info)
    assert isinstance(model, nn.Sequential) and isinstance(model[0], Normalize)
    assert model[0].mean.flatten().tolist() == pytest.approx(info.mean)
    assert model(torch.rand(2, *info.input_shape)).shape == (2, info.num_classes)


def test_architectures_match_the_papers():
    info = dataset_info("cifar10")
    assert layer_spec(create_model("mlp-256x2", info)) == [("fc", 256), "relu", ("fc", 256), "relu", ("fc", 10)]
    assert layer_spec(create_model("dm-small", info)) == [
        ("conv", 16, 4, 2, 0), "relu", ("conv", 32, 4, 1, 0), "relu", ("fc", 100), "relu", ("fc", 10)]
    assert layer_spec(create_model("dm-medium", info)) == [
        ("conv", 32, 3, 1, 0), "relu", ("conv", 32, 4, 2, 0), "relu", ("conv", 64, 3, 1, 0), "relu",
        ("conv", 64, 4, 2, 0), "relu", ("fc", 512), "relu", ("fc", 512), "relu", ("fc", 10)]
    large_convs = [("conv", 64, 3, 1, 1), ("conv", 64, 3, 1, 1), ("conv", 128, 3, 2, 1), ("conv", 128, 3, 1, 1),
                   ("conv", 128, 3, 1, 1)]
    dm_large = create_model("dm-large", info)
    assert layer_spec(dm_large) == [x for conv in large_convs for x in (conv, "relu")] + [
        ("fc", 512), "relu", ("fc", 10)]
    assert [layer.in_features for layer in dm_large if isinstance(layer, nn.Linear)] == [128 * 16 * 16, 512]
    assert layer_spec(create_model("cnn7", info)) == [x for conv in large_convs for x in (conv, "bn", "relu")] + [
        ("fc", 512), "bn", "relu", ("fc", 10)]


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(MaarError, match=r"unknown model 'resnet'.*dm-small.*mlp-256x2"):
        create_model("resnet", dataset_info("mnist"))


def test_normalize_is_per_channel_and_exports_as_sub_div():
    normalize = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))
    x = torch.rand(2, 3, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 0.25, x[:, 2] / 2.0], dim=1)
    assert torch.allclose(normalize(x), expected)
    assert normalize.mean.shape == normalize.std.shape == (1, 3, 1, 1)
    assert set(normalize.state_dict()) == {"mean", "std"}
    buffer = io.BytesIO()
    torch.onnx.export(normalize, x, buffer, dynamo=False)
    graph = onnx.load_from_string(buffer.getvalue()).graph
    assert [node.op_type for node in graph.node if node.op_type != "Constant"] == ["Sub", "Div"]
    with pytest.raises(ValueError):
        Normalize((0.5,), (0.0,))


def test_create_model_rejects_models_the_project_cannot_bound(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))

    @register_model("tanh-net")
    def tanh_net(info):
        """Uses Tanh."""
        return nn.Sequential(Normalize(info.mean, info.std), nn.Flatten(), nn.Linear(784, 10), nn.Tanh())

    @register_model("raw-net")
    def raw_net(info):
        """No Normalize."""
        return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

    info = dataset_info("mnist")
    with pytest.raises(MaarError, match=r"unsupported layer.*Tanh"):
        create_model("tanh-net", info)
    with pytest.raises(MaarError, match="first layer is Normalize"):
        create_model("raw-net", info)


def test_plugins_register_through_entry_points_loaded_lazily(tmp_path, monkeypatch):
    module = tmp_path / "maar_test_plugin_models.py"
    module.write_text(textwrap.dedent('''
        from torch import nn
        from maar_plugin.models import Normalize

        def tiny(info):
            """A plugin's tiny linear model."""
            return nn.Sequential(Normalize(info.mean, info.std), nn.Flatten(), nn.Linear(784, info.num_classes))
        '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    points = [importlib.metadata.EntryPoint("plugin-tiny", "maar_test_plugin_models:tiny", "maar_plugin.models"),
              importlib.metadata.EntryPoint("plugin-broken", "no_such_module_here:f", "maar_plugin.models")]
    monkeypatch.setattr(registry.importlib.metadata, "entry_points",
                        lambda group: [p for p in points if p.group == group])
    assert "maar_test_plugin_models" not in sys.modules
    assert {"plugin-tiny", "plugin-broken"} <= set(list_models())
    assert "maar_test_plugin_models" not in sys.modules  # listing names imports nothing
    model = create_model("plugin-tiny", dataset_info("mnist"))
    assert model(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    descriptions = model_descriptions()
    assert descriptions["plugin-tiny"] == "A plugin's tiny linear model."
    assert "unavailable" in descriptions["plugin-broken"]
    with pytest.raises(MaarError, match=r"plugin-broken.*failed to load"):
        create_model("plugin-broken", dataset_info("mnist"))


def test_cli_lists_models():
    from click.testing import CliRunner

    from maar_plugin.cli import cli

    result = CliRunner().invoke(cli, ["models"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == sorted(list_models())
    assert any(line.startswith("dm-small") and "Gowal" in line for line in lines)


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("name", BUILT_IN)
def test_auto_lirpa_traces_every_model(name, dataset):
    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = create_model(name, info).eval()
    x = torch.rand(2, *info.input_shape)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    bounded = BoundedModule(model, torch.zeros_like(x))
    box = BoundedTensor(x, PerturbationLpNorm(x_L=lower, x_U=upper))
    logits = model(x)
    for method in ("IBP", "CROWN-IBP"):
        lb, ub = bounded.compute_bounds(x=(box,), method=method)
        assert (lb <= logits + 1e-4).all() and (logits <= ub + 1e-4).all()


@pytest.mark.parametrize("dataset", DATASETS)
def test_crown_through_normalize_on_an_mlp(dataset):
    info = dataset_info(dataset)
    model = create_model("mlp-256x2", info).eval()
    x = torch.rand(2, *info.input_shape)
    box = BoundedTensor(x, PerturbationLpNorm(x_L=(x - 0.01).clamp(0, 1), x_U=(x + 0.01).clamp(0, 1)))
    lb, ub = BoundedModule(model, x).compute_bounds(x=(box,), method="CROWN")
    assert (lb <= model(x) + 1e-5).all() and (model(x) <= ub + 1e-5).all()


@pytest.mark.parametrize("dataset", DATASETS)
def test_crown_through_normalize_on_a_conv_model(dataset):
    """auto_LiRPA's patches mode cannot pass CROWN through Normalize's per-channel Sub/Div (0.3 asserts,
    0.7 fails on shapes); LirpaBounds bounds the rest of the model over the normalised box instead."""
    info = dataset_info(dataset)
    model = create_model("dm-small", info).eval()
    x = torch.rand(2, *info.input_shape)
    lower, upper = (x - 0.01).clamp(0, 1), (x + 0.01).clamp(0, 1)
    normalize, rest = split_leading_normalize(model)
    assert isinstance(normalize, Normalize) and torch.allclose(rest(normalize(x)), model(x), atol=1e-5)
    lb, ub = LirpaBounds(model, x[:1]).bounds(lower, upper, None, "CROWN")
    samples = lower + (upper - lower) * torch.rand(64, *x.shape)
    with torch.no_grad():
        outputs = torch.stack([model(sample) for sample in samples])
    assert (lb <= outputs + 1e-5).all() and (outputs <= ub + 1e-5).all()
