"""The benchmark files around an ONNX model and its VNN-LIB specs: instances.csv and an α,β-CROWN config.

Facts about α,β-CROWN (github.com/Verified-Intelligence/alpha-beta-CROWN, complete_verifier/) that the
files below rely on: ``abcrown.py --config FILE`` runs every row of ``general.csv_name`` (relative to
``general.root_path``) when no single VNN-LIB path is given (``loading.parse_run_mode``); each csv row is
``onnx,vnnlib,timeout`` relative to the root, and its timeout overrides ``bab.timeout``
(``loading.load_model_and_vnnlib``); ``${CONFIG_PATH}`` in ``root_path`` is replaced by the config
file's folder (``utils.expand_path``). Its VNN-LIB reader caches each parsed file beside it as
``<file>.vnnlib.compiled``.
"""
from __future__ import annotations

import os
from pathlib import Path

import yaml

from maar_plugin.atomic import atomic_write_text

INSTANCES_NAME = "instances.csv"
CONFIG_NAME = "abcrown.yaml"
DEVICES = ("cuda", "cpu")


def instances_csv_text(csv_dir: Path, onnx_path: Path, vnnlib_paths: list[Path], timeout: float) -> str:
    """VNN-COMP ``instances.csv``: ``onnx,vnnlib,timeout`` rows without a header, paths relative to the csv."""
    onnx = os.path.relpath(onnx_path, csv_dir)
    return "".join(f"{onnx},{os.path.relpath(vnnlib, csv_dir)},{timeout:g}\n" for vnnlib in vnnlib_paths)


def abcrown_config(input_shape: tuple[int, ...] | None, timeout: float, device: str) -> dict:
    """α,β-CROWN settings for a certified-trained ReLU classifier, run over ``instances.csv`` beside the file.

    ``solver.crown.compare_crown_with_ibp`` makes every CROWN and alpha-CROWN bound, intermediate and final,
    the better of it and IBP's (auto_LiRPA's ``compare_with_IBP``): α,β-CROWN's default pipeline never
    computes IBP bounds, and on IBP-trained networks CROWN is looser than IBP, so without it α,β-CROWN timed
    out on instances that IBP proves at once (docs/benchmarks.md, *The shipped benchmark*). Certified training
    makes these initial bounds tight, so most robust instances are verified before branch and bound.
    ``pgd_order: after`` runs PGD only when that incomplete verification fails (abcrown.py), so robust
    instances do not pay for the attack (α,β-CROWN's default ``before`` spent 296 s of a 60 s budget
    attacking a CNN-7 on the CPU before CROWN verified it). The batch size (parallel BaB subproblems) is
    smaller on the CPU. ``input_shape`` (None: left out) is needed only for csv rows without an ONNX file.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {DEVICES}, got {device!r}")
    config = {
        "general": {
            "root_path": "${CONFIG_PATH}",
            "csv_name": INSTANCES_NAME,
            "device": device,
            "complete_verifier": "bab",
            "enable_incomplete_verification": True,
        },
        "model": {"input_shape": [-1, *input_shape]} if input_shape is not None else {},
        "solver": {
            "batch_size": 1024 if device == "cuda" else 64,
            "alpha-crown": {"iteration": 100},
            "beta-crown": {"iteration": 20},
            "crown": {"compare_crown_with_ibp": True},
        },
        "bab": {
            "timeout": float(timeout),
            "branching": {"method": "kfsb", "candidates": 3, "reduceop": "max"},
        },
        "attack": {"pgd_order": "after"},
    }
    if not config["model"]:
        del config["model"]
    return config


def write_benchmark_files(spec_dir: Path, onnx_path: Path, vnnlib_paths: list[Path], input_shape: tuple[int, ...],
                          timeout: float, device: str) -> tuple[Path, Path]:
    """Write ``instances.csv`` and ``abcrown.yaml`` into ``spec_dir``; returns their paths."""
    csv_path, config_path = spec_dir / INSTANCES_NAME, spec_dir / CONFIG_NAME
    atomic_write_text(csv_path, instances_csv_text(spec_dir, onnx_path, vnnlib_paths, timeout))
    header = (f"# alpha-beta-CROWN config for the {len(vnnlib_paths)} instances in {INSTANCES_NAME} beside this file.\n"
              "# Run in alpha-beta-CROWN's complete_verifier folder:\n"
              f"#   python abcrown.py --config PATH/TO/{config_path.name}\n"
              "# Written by `maar export`; root_path ${CONFIG_PATH} is this file's folder.\n")
    body = yaml.safe_dump(abcrown_config(input_shape, timeout, device), sort_keys=False)
    atomic_write_text(config_path, header + body)
    return csv_path, config_path
