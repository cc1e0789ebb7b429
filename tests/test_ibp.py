"""Fused IBP: equal to auto_LiRPA's IBP (eval and train mode, with and without a spec) and sound."""
import pytest
import torch
from torch import nn

from maar_plugin.bounds.ibp import interval_bounds, interval_bounds_with_relu_inputs
from maar_plugin.bounds.lirpa import BoundedModule, BoundedTensor, PerturbationLpNorm  # auto_LiRPA, patched
from maar_plugin.data import dataset_info
from maar_plugin.errors import MaarError
from maar_plugin.models import Normalize, create_model, list_models

DATASETS = ["mnist", "cifar10"]


def margin_rows(labels, num_classes):
    """[B, K-1, K] rows e_y - e_j for j != y (built here so that this test does not depend on bounds.specs)."""
    eye = torch.eye(num_classes)
    rows = eye[labels].unsqueeze(1) - eye.unsqueeze(0)
    keep = torch.arange(num_classes).unsqueeze(0) != labels.unsqueeze(1)
    return rows[keep].view(len(labels), num_classes - 1, num_classes)


def box_around(x, eps):
    return (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)


def lirpa_ibp(model, lower, upper, specs, clean=None):
    """auto_LiRPA's IBP bounds for each spec, after the forward pass that sets train-mode BatchNorm statistics."""
    training = model.training
    bounded = BoundedModule(model, torch.zeros_like(lower))
    bounded.train(training)
    model.train(training)  # BoundedModule puts BatchNorm1d layers of a train-mode model in eval mode
    box = BoundedTensor((lower + upper) / 2 if clean is None else clean, PerturbationLpNorm(x_L=lower, x_U=upper))
    results = []
    for spec in specs:
        bounded(box)
        results.append(bounded.compute_bounds(x=(box,), method="IBP", C=spec))
    return results


def assert_close(ours, theirs):
    scale = max(1.0, theirs[0].abs().max().item(), theirs[1].abs().max().item())
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        assert (a - b).abs().max().item() <= 1e-5 * scale


LARGE = {"cnn7", "dm-large"}  # 13-17M parameters: their CIFAR-shape comparisons are marked slow
MODEL_SHAPES = [pytest.param(name, dataset, marks=[pytest.mark.slow] if dataset == "cifar10" and name in LARGE else [])
                for name in list_models() for dataset in DATASETS]


@pytest.mark.parametrize(("name", "dataset"), MODEL_SHAPES)
def test_equals_auto_lirpa_ibp_in_eval_mode(name, dataset):
    info = dataset_info(dataset)
    torch.manual_seed(0)
    model = create_model(name, info).eval()
    x = torch.rand(3, *info.input_shape)
    lower, upper = box_around(x, 0.02)
    spec = margin_rows(torch.tensor([0, 4, 9]), info.num_classes)
    for s, theirs in zip((None, spec), lirpa_ibp(model, lower, upper, (None, spec))):
        assert_close(interval_bounds(model, lower, upper, s), theirs)


@pytest.mark.parametrize("name", ["cnn7", "dm-small"])
def test_equals_auto_lirpa_ibp_in_train_mode(name):
    info = dataset_info("mnist")
    torch.manual_seed(1)
    model = create_model(name, info).train()
    x = torch.rand(4, *info.input_shape)
    lower, upper = box_around(x, 0.02)
    spec = margin_rows(torch.tensor([1, 2, 3, 4]), info.num_classes)
    for s, theirs in zip((None, spec), lirpa_ibp(model, lower, upper, (None, spec))):
        assert_close(interval_bounds(model, lower, upper, s), theirs)


def small_bn_model(bn):
    return nn.Sequential(Normalize((0.5,), (0.25,)), nn.Conv2d(1, 4, 3), *([nn.BatchNorm2d(4)] if bn == 2 else []),
                         nn.ReLU(), nn.Flatten(), nn.Linear(64, 16), *([nn.BatchNorm1d(16)] if bn == 1 else []),
                         nn.ReLU(), nn.Linear(16, 5))


@pytest.mark.parametrize("bn", [1, 2])
def test_train_mode_batch_norm_uses_the_clean_batch_like_auto_lirpa(bn):
    torch.manual_seed(2)
    model = small_bn_model(bn).train()
    x = torch.rand(6, 1, 6, 6)
    lower, upper = box_around(x, 0.1)
    ours = interval_bounds(model, lower, upper, clean=x)
    assert_close(ours, lirpa_ibp(model, lower, upper, [None], clean=x)[0])
    running = [buffer.clone() for buffer in model.buffers()]
    centred = interval_bounds(model, lower, upper)
    assert all(torch.equal(a, b) for a, b in zip(model.buffers(), running))  # running statistics untouched
    assert not torch.allclose(ours[0], centred[0])  # the clean batch, not the box centre, sets the statistics


@pytest.mark.parametrize("name", list_models())
def test_sound_on_sampled_points(name):
    info = dataset_info("mnist")
    torch.manual_seed(3)
    model = create_model(name, info).eval()
    if name == "cnn7":  # non-trivial running statistics
        for layer in model:
            if isinstance(layer, nn.modules.batchnorm._BatchNorm):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, *info.input_shape)
    lower, upper = box_around(x, 0.05)
    spec = margin_rows(torch.tensor([3, 7]), info.num_classes)
    (lb, ub), relu_inputs = interval_bounds_with_relu_inputs(model, lower, upper)
    slb, sub = interval_bounds(model, lower, upper, spec)
    relus = [layer for layer in model if isinstance(layer, nn.ReLU)]
    assert len(relu_inputs) == len(relus)
    seen = []
    hooks = [relu.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0])) for relu in relus]
    with torch.no_grad():
        for corners in (False, True):  # uniform points, then box corners
            seen.clear()
            fractions = torch.rand(32, *x.shape)
            points = lower + (upper - lower) * (fractions.round() if corners else fractions)
            logits = model(points.flatten(0, 1)).view(32, 2, -1)
            assert (lb - 1e-4 <= logits).all() and (logits <= ub + 1e-4).all()
            margins = torch.einsum("bsk,nbk->nbs", spec, logits)
            assert (slb - 1e-4 <= margins).all() and (margins <= sub + 1e-4).all()
            for (low, high), value in zip(relu_inputs, seen):
                value = value.view(32, 2, *value.shape[1:])
                assert (low - 1e-4 <= value).all() and (value <= high + 1e-4).all()
    for hook in hooks:
        hook.remove()


def test_spec_is_folded_not_applied_after_the_bounds():
    torch.manual_seed(4)
    model = create_model("mlp-256x2", dataset_info("mnist")).eval()
    lower, upper = box_around(torch.rand(2, 1, 28, 28), 0.05)
    spec = margin_rows(torch.tensor([0, 1]), 10)
    folded_lower, _ = interval_bounds(model, lower, upper, spec)
    lb, ub = interval_bounds(model, lower, upper)
    centre, radius = (ub + lb) / 2, (ub - lb) / 2
    after_lower = spec.matmul(centre.unsqueeze(-1)).squeeze(-1) - spec.abs().matmul(radius.unsqueeze(-1)).squeeze(-1)
    assert (folded_lower >= after_lower - 1e-5).all() and (folded_lower > after_lower + 1e-3).any()


def test_gradients_reach_every_parameter():
    torch.manual_seed(5)
    model = create_model("cnn7", dataset_info("mnist")).train()
    x = torch.rand(4, 1, 28, 28)
    lower, upper = box_around(x, 0.01)
    lb, _ = interval_bounds(model, lower, upper, margin_rows(torch.tensor([0, 1, 2, 3]), 10), clean=x)
    lb.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_unsupported_models_are_refused():
    lower = torch.zeros(1, 4)
    with pytest.raises(MaarError, match="Tanh"):
        interval_bounds(nn.Sequential(nn.Linear(4, 2), nn.Tanh()), lower, lower + 1)
    with pytest.raises(MaarError, match="Sequential"):
        interval_bounds(nn.Linear(4, 2), lower, lower + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
@pytest.mark.parametrize("train", [False, True])
def test_equals_auto_lirpa_ibp_on_the_gpu(train, monkeypatch):
    # TF32 convolutions differ from each other by ~1e-5 relative; compare full float32 arithmetic
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    info = dataset_info("cifar10")
    torch.manual_seed(6)
    model = create_model("cnn7", info).cuda().train(train)
    x = torch.rand(8, *info.input_shape, device="cuda")
    lower, upper = box_around(x, 2 / 255)
    spec = margin_rows(torch.arange(8) % 10, info.num_classes).cuda()
    for s, theirs in zip((None, spec), lirpa_ibp(model, lower, upper, (None, spec))):
        assert_close(interval_bounds(model, lower, upper, s), theirs)
