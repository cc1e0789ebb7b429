"""An estimate of the working memory the bound stages need on a LayerGraph, checked before loading.

auto_LiRPA's CROWN pass bounds every ReLU's input by a backward pass of linear coefficients from
that ReLU's neurons: convolutions keep them as patches (one row of ``channels × receptive field²``
per neuron), a Linear layer turns them into dense rows as wide as its input. The estimate is the
largest such coefficient set, times a factor for the lower and upper copies and temporaries, plus
the parameters. It is meant to tell a network that fits from one that cannot (a dm-large-sized
model from one ten times larger), not to predict the resident size to the megabyte.
"""
from __future__ import annotations

import torch
from torch import nn

from maar_plugin.verification.graph import LayerGraph

BYTES_PER_VALUE = 4
COPIES = 6   # lower and upper coefficients, their products with the next layer's weights, slack


def estimated_memory(graph: LayerGraph) -> float:
    """Bytes the IBP/CROWN/alpha-CROWN stages need for one instance (an estimate; see the module)."""
    parameters = sum(p.numel() for p in graph.parameters()) + sum(b.numel() for b in graph.buffers())
    receptive, stride, channels, widest_vector = 1, 1, 1, 0
    peak = 0
    for index in range(1, len(graph.nodes)):
        module = graph.module_of(index)
        size = int(torch.Size(graph.nodes[index].shape).numel())
        if isinstance(module, (nn.Conv2d, nn.AvgPool2d)):
            kernel = module.kernel_size if isinstance(module.kernel_size, tuple) else (module.kernel_size,) * 2
            step = module.stride if isinstance(module.stride, tuple) else (module.stride,) * 2
            receptive += (max(kernel) - 1) * stride
            stride *= max(step)
            if isinstance(module, nn.Conv2d):
                channels = max(channels, module.in_channels)
        elif isinstance(module, nn.Linear):
            widest_vector = max(widest_vector, module.in_features)
        elif isinstance(module, nn.ReLU):
            width = widest_vector or channels * receptive ** 2
            peak = max(peak, size * min(width, graph.num_inputs + 1))
    return float(BYTES_PER_VALUE * (parameters + COPIES * peak))
