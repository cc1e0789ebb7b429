"""``maar export``: a training run's model and test images as a VNN-COMP style benchmark.

Layout for ``out = models/NAME`` (the specs root defaults to ``vnnlib_specs`` beside ``models/``)::

    models/NAME.onnx                          the network, BatchNorm folded, normalisation inside
    vnnlib_specs/NAME/img<index>_eps<eps>.vnnlib  one negated robustness property per test image
    vnnlib_specs/NAME/instances.csv           onnx,vnnlib,timeout rows relative to the csv
    vnnlib_specs/NAME/abcrown.yaml            α,β-CROWN config running every row of instances.csv
    vnnlib_specs/NAME/abcrown_native.yaml     with ``abcrown_native``: α,β-CROWN loads the run and images itself
    vnnlib_specs/NAME/export.json             what was exported: run, ε, test indices, labels, predictions
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch

import maar_plugin
from maar_plugin.atomic import atomic_write_text
from maar_plugin.data import dataset_info, load_dataset
from maar_plugin.errors import MaarError
from maar_plugin.export.abcrown import CONFIG_NAME, DEVICES, INSTANCES_NAME, write_benchmark_files
from maar_plugin.export.abcrown_native import NATIVE_CONFIG_NAME, NATIVE_INDICES_NAME, write_native_config
from maar_plugin.export.onnx_export import OnnxCheck, export_onnx
from maar_plugin.training.run_files import load_trained_model
from maar_plugin.vnnlib import write_robustness_vnnlib

SELECTIONS = ("first", "random")
MANIFEST_NAME = "export.json"
_GENERATED = ("*.vnnlib", "*.vnnlib.compiled", INSTANCES_NAME, CONFIG_NAME, MANIFEST_NAME, NATIVE_CONFIG_NAME,
              NATIVE_INDICES_NAME)


@dataclass(frozen=True)
class ExportPaths:
    """Where one export writes: the ONNX file and the folder of specs, csv and config."""

    onnx: Path
    spec_dir: Path

    @staticmethod
    def from_out(out: str | Path, specs_dir: str | Path | None) -> ExportPaths:
        """``out`` is ``models/NAME`` (``.onnx`` optional); specs go to ``<specs_dir>/NAME``, by default
        ``vnnlib_specs`` beside the folder holding the ONNX file."""
        out = Path(out)
        name = out.stem if out.suffix == ".onnx" else out.name
        onnx_path = out if out.suffix == ".onnx" else out.with_name(name + ".onnx")
        root = Path(specs_dir) if specs_dir is not None else onnx_path.parent.parent / "vnnlib_specs"
        return ExportPaths(onnx_path, root / name)


@dataclass(frozen=True)
class ExportSummary:
    """What export_run wrote, the ONNX check, and how many selected images the model misclassifies."""

    paths: ExportPaths
    check: OnnxCheck
    instances: int
    misclassified: int


def export_run(run_dir: str | Path, eps: float, count: int, out: str | Path, selection: str = "first", seed: int = 0,
               timeout: float = 120.0, force: bool = False, specs_dir: str | Path | None = None,
               device: str = "cuda", abcrown_native: bool = False) -> ExportSummary:
    """Export the run's model to ONNX and ``count`` test images as ε-robustness VNN-LIB instances.

    Misclassified images are kept: their property is violated by the image itself, which a verifier
    must find too. ``selection`` is ``first`` (test images 0..count-1) or ``random`` (``seed``ed sample).
    ``abcrown_native`` also writes the α,β-CROWN config that loads the run and the images itself.
    """
    _check_selection(eps, count, selection)
    _check_benchmark_options(timeout, device)
    run_dir = Path(run_dir)
    model, config, epoch = load_trained_model(run_dir)
    paths = ExportPaths.from_out(out, specs_dir)
    _refuse_existing(paths, force)
    info = dataset_info(config.dataset)
    images, labels = load_dataset(config.dataset, "test", config.data_dir)
    if count > len(images):
        raise MaarError(f"--count {count} is larger than the {config.dataset} test set ({len(images)} images)")
    indices = _select(len(images), count, selection, seed)
    images, labels = images[indices], labels[indices]
    with torch.no_grad():
        predictions = model(images).argmax(dim=1)

    metadata = {"producer": f"maar-plugin {maar_plugin.__version__}", "maar_plugin_version": maar_plugin.__version__,
                "run_dir": str(run_dir),
                "dataset": info.name, "model": config.model, "objective": config.objective,
                "train_eps": str(config.effective_train_eps), "eps": repr(float(eps)), "epoch": str(epoch),
                "input": f"[1, {', '.join(map(str, info.input_shape))}] pixels in [0, 1], normalised in the graph"}
    check = export_onnx(paths.onnx, model, images, metadata)
    paths.spec_dir.mkdir(parents=True, exist_ok=True)
    _remove_generated(paths.spec_dir)  # an earlier export's files, present only under --force

    vnnlib_paths = []
    for index, image, label in zip(indices.tolist(), images.numpy(), labels.tolist()):
        path = paths.spec_dir / f"img{index:05d}_eps{eps:g}.vnnlib"
        comments = {"dataset": info.name, "test_index": str(index), "model": paths.onnx.name,
                    "run_dir": str(run_dir), "producer": metadata["producer"]}
        write_robustness_vnnlib(path, image, label, eps, info.num_classes, comments)
        vnnlib_paths.append(path)
    write_benchmark_files(paths.spec_dir, paths.onnx, vnnlib_paths, info.input_shape, timeout, device)
    if abcrown_native:
        write_native_config(paths.spec_dir, run_dir, model, config.dataset, config.data_dir, eps, indices.tolist(),
                            timeout, device)
    manifest = {**metadata, "selection": selection, "seed": seed if selection == "random" else None,
                "timeout": timeout, "onnx_check": asdict(check), "test_indices": indices.tolist(),
                "labels": labels.tolist(), "predictions": predictions.tolist()}
    atomic_write_text(paths.spec_dir / MANIFEST_NAME, json.dumps(manifest, indent=1) + "\n")
    misclassified = int((predictions != labels).sum())
    return ExportSummary(paths, check, len(vnnlib_paths), misclassified)


def write_abcrown_config_only(out: str | Path, timeout: float = 120.0, force: bool = False,
                              specs_dir: str | Path | None = None, device: str = "cuda") -> ExportPaths:
    """Write instances.csv and abcrown.yaml for an existing ONNX file and folder of ``*.vnnlib`` specs."""
    _check_benchmark_options(timeout, device)
    paths = ExportPaths.from_out(out, specs_dir)
    if not paths.onnx.is_file():
        raise MaarError(f"no ONNX model at {paths.onnx}")
    vnnlib_paths = sorted(paths.spec_dir.glob("*.vnnlib"))
    if not vnnlib_paths:
        raise MaarError(f"no .vnnlib files in {paths.spec_dir}")
    existing = [p for p in (paths.spec_dir / INSTANCES_NAME, paths.spec_dir / CONFIG_NAME) if p.exists()]
    if existing and not force:
        raise MaarError(f"{existing[0]} exists; use --force to overwrite it")
    try:
        graph_input = onnx.load(str(paths.onnx), load_external_data=False).graph.input[0]
    except Exception as error:  # onnx raises DecodeError and others for foreign files
        raise MaarError(f"{paths.onnx}: cannot read ONNX model ({type(error).__name__})") from None
    shape = tuple(d.dim_value for d in graph_input.type.tensor_type.shape.dim)[1:]
    write_benchmark_files(paths.spec_dir, paths.onnx, vnnlib_paths, shape, timeout, device)
    return paths


def _check_selection(eps: float, count: int, selection: str) -> None:
    if not 0 < eps <= 1:
        raise MaarError(f"--eps must be in (0, 1] (pixel space), got {eps}")
    if count < 1:
        raise MaarError(f"--count must be at least 1, got {count}")
    if selection not in SELECTIONS:
        raise MaarError(f"--selection must be one of {', '.join(SELECTIONS)}, got {selection!r}")


def _check_benchmark_options(timeout: float, device: str) -> None:
    if not timeout > 0:
        raise MaarError(f"--timeout must be positive, got {timeout}")
    if device not in DEVICES:
        raise MaarError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")


def _select(total: int, count: int, selection: str, seed: int) -> np.ndarray:
    if selection == "first":
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(total, size=count, replace=False))


def _refuse_existing(paths: ExportPaths, force: bool) -> None:
    if force:
        return
    if paths.onnx.exists():
        raise MaarError(f"{paths.onnx} exists; use --force to overwrite it")
    if paths.spec_dir.exists() and any(paths.spec_dir.iterdir()):
        raise MaarError(f"{paths.spec_dir} is not empty; use --force to overwrite it")


def _remove_generated(spec_dir: Path) -> None:
    """Remove what an earlier export wrote (and α,β-CROWN's parse caches), so no stale instance survives."""
    for pattern in _GENERATED:
        for path in spec_dir.glob(pattern):
            path.unlink()
