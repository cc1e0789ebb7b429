"""Read the keys of an existing α,β-CROWN YAML config that map onto ``maar verify``.

Mapped: ``model.onnx_path`` + ``specification.vnnlib_path`` (one instance) or ``general.root_path`` +
``general.csv_name`` (a VNN-COMP instances.csv, its rows ``data.start`` to ``data.end`` as in α,β-CROWN;
``${CONFIG_PATH}`` is the config's folder, as in α,β-CROWN), and the settings in ``OPTION_KEYS`` onto
:class:`~maar_plugin.verification.options.VerifyOptions` fields (``bab.branching.method`` through
``BRANCHING_METHODS``). Keys that describe what this cascade always does (complete verification after
incomplete bounds, PGD first, the input shape the ONNX file gives) are accepted silently; every other key
is reported as ignored. ``Customized(...)`` entries name Python code to run, which this reader never does.
A leaf of the verifier: it imports neither auto_LiRPA nor the LP solver.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from maar_plugin.errors import MaarError
from maar_plugin.verification.instances import Instance, read_instances_csv
from maar_plugin.verification.options import BRANCHING_NAMES

OPTION_KEYS = {            # α,β-CROWN key → VerifyOptions field ("bab." fields: its BabOptions)
    "bab.timeout": "timeout",
    "general.device": "device",
    "general.seed": "seed",
    "solver.alpha-crown.iteration": "alpha_iterations",
    "solver.alpha-crown.lr_alpha": "alpha_lr",
    "attack.pgd_restarts": "pgd_restarts",
    "attack.pgd_steps": "pgd_steps",
    "solver.batch_size": "bab.batch_size",
    "solver.beta-crown.iteration": "bab.iterations",
    "solver.beta-crown.lr_alpha": "bab.lr_alpha",
    "solver.beta-crown.lr_beta": "bab.lr_beta",
    "bab.branching.method": "bab.branching",
    "bab.branching.candidates": "bab.branching_candidates",
}
BRANCHING_METHODS = {"babsr": "babsr", "fsb": "fsb", "kfsb": "fsb", "intercept": "intercept"}
_PATH_KEYS = {"model.onnx_path", "specification.vnnlib_path", "general.root_path", "general.csv_name", "data.start",
              "data.end"}
_CONSISTENT_KEYS = {"general.complete_verifier", "general.enable_incomplete_verification", "model.input_shape",
                    "attack.pgd_order"}


@dataclass
class AbcrownJob:
    """What a config asks for: the instances, option overrides (VerifyOptions field → value, BabOptions'
    under ``bab``), ignored keys, and the config itself (what ``--verifier abcrown`` runs)."""

    instances: list[Instance]
    document: dict = field(default_factory=dict)
    options: dict[str, object] = field(default_factory=dict)
    ignored_keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _flatten(mapping: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def read_abcrown_config(path: str | Path) -> AbcrownJob:
    """Instances and options of an α,β-CROWN config; MaarError for unreadable files and Customized entries."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as error:
        raise MaarError(f"{path}: cannot read config ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise MaarError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(document, dict):
        raise MaarError(f"{path}: an α,β-CROWN config is a YAML mapping")
    flat = _flatten(document)
    for key, value in flat.items():
        if isinstance(value, str) and value.strip().startswith("Customized("):
            raise MaarError(f"{path}: {key}: {value.strip()[:60]} loads Python code, which maar verify does not "
                            "run; export the model to ONNX and give model.onnx_path or general.csv_name")
    options: dict[str, object] = {}
    notes = []
    for key, value in flat.items():
        if key not in OPTION_KEYS or value is None:
            continue
        if key == "bab.branching.method":
            if value not in BRANCHING_METHODS:
                notes.append(f"bab.branching.method {value!r} has no equivalent here; using "
                             f"{BRANCHING_NAMES[0]!r} (choose from {', '.join(sorted(BRANCHING_METHODS))})")
                continue
            value = BRANCHING_METHODS[str(value)]
        target, _, inner = OPTION_KEYS[key].partition(".")
        if inner:
            options.setdefault(target, {})[inner] = value  # type: ignore[index]
        else:
            options[target] = value
    if options.get("device", "cpu") != "cpu" and not torch.cuda.is_available():
        notes.append(f"general.device {options['device']!r} is not available here; using cpu")
        options["device"] = "cpu"
    ignored = sorted(key for key in flat if key not in OPTION_KEYS and key not in _PATH_KEYS
                     and key not in _CONSISTENT_KEYS)
    return AbcrownJob(_instances(path, flat), document, options, ignored, notes)


def _instances(path: Path, flat: dict[str, object]) -> list[Instance]:
    root_value = flat.get("general.root_path")
    root = Path(str(root_value).replace("${CONFIG_PATH}", str(path.parent.resolve()))) if root_value else None
    onnx, vnnlib = flat.get("model.onnx_path"), flat.get("specification.vnnlib_path")
    if onnx and vnnlib:
        base = root if root is not None else Path.cwd()
        return [Instance(base / str(onnx), base / str(vnnlib))]
    csv_name = flat.get("general.csv_name")
    if csv_name:
        base = root if root is not None else Path.cwd()
        rows = read_instances_csv(base / str(csv_name), root=base)
        start, end = flat.get("data.start"), flat.get("data.end")
        if not (start is None or isinstance(start, int)) or not (end is None or isinstance(end, int)):
            raise MaarError(f"{path}: data.start and data.end must be whole numbers (csv rows)")
        selected = rows[start:end]
        if not selected:
            raise MaarError(f"{path}: data.start {start} / data.end {end} select none of the {len(rows)} csv rows")
        return selected
    raise MaarError(f"{path}: the config names no instances (model.onnx_path + specification.vnnlib_path, "
                    "or general.root_path + general.csv_name)")
