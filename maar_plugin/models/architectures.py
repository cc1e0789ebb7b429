"""The built-in architectures of the certified-training literature, all ``Sequential(Normalize, ...)``."""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from maar_plugin.data import DatasetInfo
from maar_plugin.models.normalize import Normalize
from maar_plugin.models.registry import register_model

ConvSpec = tuple[int, int, int, int]  # (out_channels, kernel, stride, padding)


def conv_relu_net(info: DatasetInfo, convs: Sequence[ConvSpec], hidden: Sequence[int],
                  batch_norm: bool = False) -> nn.Sequential:
    """Normalize, then Conv(+BN)+ReLU per ``convs``, Flatten, Linear(+BN)+ReLU per ``hidden``, Linear to
    the classes."""
    channels, height, width = info.input_shape
    layers: list[nn.Module] = [Normalize(info.mean, info.std)]
    for out_channels, kernel, stride, padding in convs:
        layers.append(nn.Conv2d(channels, out_channels, kernel, stride=stride, padding=padding))
        layers += [nn.BatchNorm2d(out_channels)] if batch_norm else []
        layers.append(nn.ReLU())
        channels = out_channels
        height = (height + 2 * padding - kernel) // stride + 1
        width = (width + 2 * padding - kernel) // stride + 1
    layers.append(nn.Flatten())
    features = channels * height * width
    for size in hidden:
        layers.append(nn.Linear(features, size))
        layers += [nn.BatchNorm1d(size)] if batch_norm else []
        layers.append(nn.ReLU())
        features = size
    layers.append(nn.Linear(features, info.num_classes))
    return nn.Sequential(*layers)


@register_model("mlp-256x2")
def mlp_256x2(info: DatasetInfo) -> nn.Sequential:
    """Two-hidden-layer MLP, 256 units each.

    Layers: Flatten, fc 256, ReLU, fc 256, ReLU, fc K.
    """
    return conv_relu_net(info, convs=(), hidden=(256, 256))


@register_model("dm-small")
def dm_small(info: DatasetInfo) -> nn.Sequential:
    """DM-small of Gowal et al. 2018, "On the effectiveness of interval bound propagation".

    Layers (ReLU after each but the last; no padding, as DeepMind's 'VALID'):
    conv 16 4x4 s2, conv 32 4x4 s1, fc 100, fc K.
    """
    return conv_relu_net(info, convs=((16, 4, 2, 0), (32, 4, 1, 0)), hidden=(100,))


@register_model("dm-medium")
def dm_medium(info: DatasetInfo) -> nn.Sequential:
    """DM-medium of Gowal et al. 2018, "On the effectiveness of interval bound propagation".

    Layers (ReLU after each but the last; no padding, as DeepMind's 'VALID'):
    conv 32 3x3 s1, conv 32 4x4 s2, conv 64 3x3 s1, conv 64 4x4 s2, fc 512, fc 512, fc K.
    """
    return conv_relu_net(info, convs=((32, 3, 1, 0), (32, 4, 2, 0), (64, 3, 1, 0), (64, 4, 2, 0)),
                         hidden=(512, 512))


_LARGE_CONVS: tuple[ConvSpec, ...] = ((64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1))


@register_model("dm-large")
def dm_large(info: DatasetInfo) -> nn.Sequential:
    """DM-large of Gowal et al. 2018 in CROWN-IBP's variant (Zhang et al. 2020, IBP_large).

    Layers (ReLU after each but the last): conv 64 3x3 s1 p1, conv 64 3x3 s1 p1, conv 128 3x3 s2 p1,
    conv 128 3x3 s1 p1, conv 128 3x3 s1 p1, fc 512, fc K.
    """
    return conv_relu_net(info, convs=_LARGE_CONVS, hidden=(512,))


@register_model("cnn7")
def cnn7(info: DatasetInfo) -> nn.Sequential:
    """CNN-7 with BatchNorm of Shi et al. 2021, "Fast certified robust training with short warmup".

    Layers (BatchNorm and ReLU after each but the last): conv 64 3x3 s1 p1, conv 64 3x3 s1 p1,
    conv 128 3x3 s2 p1, conv 128 3x3 s1 p1, conv 128 3x3 s1 p1, fc 512, fc K.
    """
    return conv_relu_net(info, convs=_LARGE_CONVS, hidden=(512,), batch_norm=True)
