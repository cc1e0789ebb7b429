"""The benchmark sets of `side_by_side.py`: VNN-COMP 2021/2022 sets by name, and a user's own.

A set is the rows of one instances.csv in a user's VNN-COMP benchmarks checkout (all of them, or those whose
network path contains a string), α,β-CROWN's own config for it (a path in its ``complete_verifier/``) with
the changes this CPU needs, and options for `maar verify`, if any.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from maar_plugin.errors import MaarError
from maar_plugin.verification import Instance, instance_names, read_instances_csv

SUITES = {"vnncomp2021": "VNN-COMP 2021", "vnncomp2022": "VNN-COMP 2022"}
NO_CPLEX = {"bab": {"cut": {"enabled": False, "cplex_cuts": False}}}  # CPLEX's get_cuts: not on pip


@dataclass(frozen=True)
class BenchmarkSet:
    """One named set: where its rows and α,β-CROWN's config lie, and what changes on this CPU."""

    name: str
    suite: str  # the checkout that holds it: a key of SUITES, or "" for a user's own set
    csv: str  # the instances.csv: relative to the suite checkout's root (a user's set: a path)
    abcrown_config: str  # relative to α,β-CROWN's complete_verifier/ (a user's set: a path)
    abcrown_changes: dict = field(default_factory=dict)  # merged into the config
    onnx_contains: str = ""  # only the rows whose network path contains this
    maar_options: tuple[str, ...] = ()  # added to `maar verify`


NAMED_SETS = {s.name: s for s in [
    BenchmarkSet("mnist_fc", "vnncomp2022", "benchmarks/mnist_fc/instances.csv", "exp_configs/vnncomp22/mnistfc.yaml"),
    BenchmarkSet("acasxu", "vnncomp2022", "benchmarks/acasxu/instances.csv", "exp_configs/vnncomp21/acasxu.yaml"),
    BenchmarkSet("oval21", "vnncomp2021", "benchmarks/oval21/oval21_instances.csv", "exp_configs/vnncomp21/oval21.yaml",
                 abcrown_changes=NO_CPLEX),
    BenchmarkSet("cifar10_resnet", "vnncomp2021", "benchmarks/cifar10_resnet/cifar10_resnet_instances.csv",
                 "exp_configs/vnncomp21/cifar10-resnet.yaml"),
    BenchmarkSet("eran_relu", "vnncomp2021", "benchmarks/eran/eran_instances.csv",
                 "exp_configs/vnncomp21/eran_mlp.yaml", onnx_contains="mnist_relu_9_200"),
    BenchmarkSet("eran_sigmoid", "vnncomp2021", "benchmarks/eran/eran_instances.csv",
                 "exp_configs/vnncomp21/eran_sigmoid.yaml", onnx_contains="SIGMOID"),
    BenchmarkSet("verivital", "vnncomp2021", "benchmarks/verivital/verivital_instances.csv",
                 "exp_configs/vnncomp21/verivital.yaml"),
    BenchmarkSet("marabou-cifar10", "vnncomp2021", "benchmarks/marabou-cifar10/marabou-cifar10_instances.csv",
                 "exp_configs/vnncomp21/marabou_cifar10.yaml"),
]}


def own_set(name: str, csv: Path) -> BenchmarkSet:
    """A user's set: an instances.csv that `maar export` wrote, with the abcrown.yaml beside it."""
    if name in NAMED_SETS:
        raise MaarError(f"--extra {name}: {name} is a VNN-COMP set; give your set another name")
    return BenchmarkSet(name, "", str(csv), str(csv.parent / "abcrown.yaml"))


def merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` merged in, nested mappings key by key (neither is changed)."""
    result = dict(base)
    for key, value in changes.items():
        result[key] = merged(result.get(key) or {}, value) if isinstance(value, dict) else value
    return result


@dataclass
class ResolvedSet:
    """A set found on disk: its rows (named as `maar verify` names them) and α,β-CROWN's config."""

    definition: BenchmarkSet
    csv: Path
    instances: list[tuple[str, Instance]]
    abcrown_config_path: Path
    abcrown_config: dict


def _csv_path(definition: BenchmarkSet, checkouts: dict[str, Path | None]) -> Path:
    if not definition.suite:
        path = Path(definition.csv)
        if not path.is_file():
            raise MaarError(f"{definition.name}: {path} does not exist")
        return path
    root = checkouts.get(definition.suite)
    if root is None:
        raise MaarError(f"set {definition.name} is in {SUITES[definition.suite]}: give --{definition.suite} DIR "
                        "(the root of its benchmarks checkout)")
    path = root / definition.csv
    if not path.is_file():
        raise MaarError(f"{definition.name}: {path} does not exist (is {root} the root of a "
                        f"{SUITES[definition.suite]} benchmarks checkout, with {Path(definition.csv).parent}/?)")
    return path


def resolve(definition: BenchmarkSet, checkouts: dict[str, Path | None], abcrown: Path,
            config_override: Path | None = None) -> ResolvedSet:
    """The set's rows and config on disk; a one-line :class:`MaarError` for anything missing."""
    csv = _csv_path(definition, checkouts)
    rows = [instance for instance in read_instances_csv(csv) if definition.onnx_contains in str(instance.onnx)]
    if not rows:
        raise MaarError(f"{definition.name}: no rows of {csv} have a network path with {definition.onnx_contains!r}")
    instances = list(zip(instance_names(rows), rows))
    config_path = config_override or (Path(definition.abcrown_config) if not definition.suite
                                      else abcrown / "complete_verifier" / definition.abcrown_config)
    if not config_path.is_file():
        raise MaarError(f"{definition.name}: α,β-CROWN config {config_path} does not exist"
                        + ("" if config_override else f" (give one with --abcrown-config {definition.name}=PATH)"))
    try:
        config = yaml.safe_load(config_path.read_text()) or {}
    except yaml.YAMLError as error:
        raise MaarError(f"{config_path}: not YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise MaarError(f"{config_path}: an α,β-CROWN config is a mapping")
    if config_override is None:
        config = merged(config, definition.abcrown_changes)
    return ResolvedSet(definition, csv, instances, config_path, config)


def sample(instances: list, count: int | None, seed: int) -> list:
    """``count`` of ``instances`` drawn with ``seed``, in their order (all without ``count``). A larger
    ``count`` with the same seed keeps the smaller one's draw, so a resumed run only adds instances."""
    if count is None or count >= len(instances):
        return list(instances)
    order = list(range(len(instances)))
    random.Random(seed).shuffle(order)
    return [instances[index] for index in sorted(order[:count])]
