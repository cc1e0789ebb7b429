"""Shi et al. 2021 warm-up: IBP initialisation keeps bound widths steady; the regulariser's terms."""
import math
from itertools import pairwise

import pytest
import torch
from torch import nn

from maar_plugin.bounds.ibp import interval_bounds_with_relu_inputs
from maar_plugin.data import dataset_info
from maar_plugin.models import Normalize, create_model
from maar_plugin.training.shi_warmup import ibp_initialize_, regularizer_from_bounds, warmup_regularizer


def deep_mlp():
    layers = [Normalize((0.1307,), (0.3081,)), nn.Flatten(), nn.Linear(784, 512), nn.ReLU()]
    for _ in range(4):
        layers += [nn.Linear(512, 512), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(512, 10))


def width_growth(model, seed=0):
    """|log| of the mean-radius ratio between consecutive ReLU pre-activation boxes, per layer after the first."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 1, 28, 28, generator=generator)
    _, relu_inputs = interval_bounds_with_relu_inputs(model, (x - 0.05).clamp(0, 1), (x + 0.05).clamp(0, 1))
    radii = [((upper - lower) / 2).mean().item() for lower, upper in relu_inputs]
    return [abs(math.log(after / before)) for before, after in pairwise(radii)]


def test_ibp_init_draws_weights_with_the_papers_std_and_keeps_the_last_layer():
    torch.manual_seed(0)
    model = create_model("dm-medium", dataset_info("mnist"))
    last_weight = model[-1].weight.clone()
    ibp_initialize_(model)
    affine = [layer for layer in model if isinstance(layer, (nn.Linear, nn.Conv2d))]
    for layer in affine[:-1]:
        fan_in = layer.weight[0].numel()
        assert layer.weight.std().item() == pytest.approx(math.sqrt(2 * math.pi) / fan_in, rel=0.1)
        assert layer.weight.mean().abs().item() < 0.1 * layer.weight.std().item()
        assert torch.count_nonzero(layer.bias) == 0
    assert torch.equal(model[-1].weight, last_weight)


@pytest.mark.parametrize("build", [deep_mlp, lambda: create_model("dm-medium", dataset_info("mnist"))])
def test_ibp_init_keeps_bound_width_near_constant_from_layer_to_layer(build):
    torch.manual_seed(1)
    default = build()
    initialised = ibp_initialize_(build())
    with torch.no_grad():
        default_growth, ibp_growth = width_growth(default), width_growth(initialised)
    assert max(ibp_growth) < math.log(1.25)  # ratio within [0.8, 1.25]
    assert sum(ibp_growth) < 0.25 * sum(default_growth)


def test_regulariser_gradients_reach_the_parameters():
    torch.manual_seed(2)
    model = create_model("cnn7", dataset_info("mnist")).train()
    x = torch.rand(8, 1, 28, 28)
    loss = warmup_regularizer(model, (x - 0.1).clamp(0, 1), (x + 0.1).clamp(0, 1), clean=x)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    convs = [layer for layer in model if isinstance(layer, nn.Conv2d)]
    assert all(layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0 for layer in convs)


def box(centre, radius):
    return centre - radius, centre + radius


def test_tightness_term_penalises_bounds_looser_than_input_over_tolerance():
    input_box = box(torch.zeros(4, 10), torch.full((4, 10), 0.1))
    balanced = torch.tensor([1.0, -1.0]).repeat(4, 5)
    # radius 0.15 < input radius / tolerance = 0.2: no penalty; radius 0.4: (0.5 - 0.1 / 0.4) / 0.5
    assert regularizer_from_bounds(input_box, [box(balanced, torch.full_like(balanced, 0.15))], 0.5).item() == 0
    loose = regularizer_from_bounds(input_box, [box(balanced, torch.full_like(balanced, 0.4))], 0.5)
    assert loose.item() == pytest.approx(0.5)


def test_relu_term_penalises_imbalance_between_active_and_inactive_neurons():
    input_box = box(torch.zeros(2, 6), torch.full((2, 6), 1.0))
    radius = torch.full((2, 6), 0.01)
    symmetric = torch.tensor([[2.0, -2.0, 1.0, -1.0, 3.0, -3.0]] * 2)
    assert regularizer_from_bounds(input_box, [box(symmetric, radius)], 0.5).item() == pytest.approx(0, abs=1e-6)
    mostly_dead = torch.tensor([[0.1, -2.0, -1.0, -1.0, -3.0, -3.0]] * 2)
    assert regularizer_from_bounds(input_box, [box(mostly_dead, radius)], 0.5).item() > 0.5
    no_stable_neuron = box(torch.zeros(2, 6), torch.ones(2, 6))
    value = regularizer_from_bounds(input_box, [no_stable_neuron], 0.5)
    assert torch.isfinite(value) and value.item() == 0


def test_regulariser_is_averaged_over_relu_layers():
    input_box = box(torch.zeros(4, 10), torch.full((4, 10), 0.1))
    balanced = torch.tensor([1.0, -1.0]).repeat(4, 5)
    loose, tight = box(balanced, torch.full_like(balanced, 0.4)), box(balanced, torch.full_like(balanced, 0.1))
    both = regularizer_from_bounds(input_box, [loose, tight], 0.5)
    assert both.item() == pytest.approx(regularizer_from_bounds(input_box, [loose], 0.5).item() / 2)
