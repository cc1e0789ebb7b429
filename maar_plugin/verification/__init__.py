"""Complete verification of networks against VNN-LIB properties (``maar verify``).

The flow, one subpackage per concern:

- :mod:`.network`: the model graph. ``onnx_import`` turns an ONNX file into a
  :class:`~.network.layers.LayerGraph` of torch layers (our own converter, see there why not onnx2torch),
  ``module_import`` an ``nn.Sequential`` held in memory (the Python API, :mod:`maar_plugin.api`);
  ``runtime`` runs the original file in onnxruntime (or the module), the reference every counterexample
  must pass.
- :mod:`.bounding`: the bound passes. ``lirpa_stages``: IBP, CROWN and alpha-CROWN through auto_LiRPA
  (:mod:`maar_plugin.bounds.lirpa`, the wrapper training uses too); ``linear``: our batched CROWN pass
  with α slopes and β split multipliers over branch-and-bound domains; ``lp``: LPs with a lower bound
  that is sound whatever the solver's tolerances (HiGHS).
- :mod:`.search`: the complete search. ``bab``: batched branch and bound on ReLU splits (``branching``
  picks the splits, ``pattern_lp`` decides fully split domains exactly); ``input_split``: branch and bound
  on the input box for networks with few inputs.
- :mod:`.run`: running and recording instances. ``cascade`` runs centre point, IBP, CROWN, PGD,
  alpha-CROWN, then branch and bound on one instance (``models`` loads each network once per run);
  ``batch`` verifies many into a results folder (``records``: result files, log, summary), whole or as one
  ``shard``; ``tables`` prints what a folder holds.
- :mod:`.abcrown`: a user's α,β-CROWN in place of the cascade (``--verifier abcrown``) and the reader of
  α,β-CROWN's YAML configs; neither imports auto_LiRPA or the LP solver.
- Leaves that everything shares: ``options`` (every setting, defined once), ``instances``, ``spec`` (a
  property held in memory), ``result``, ``memory`` (the memory limit's shares and the estimate of what a
  network needs).

The public names below are imported on first use, so that ``import maar_plugin.verification`` costs
nothing and the α,β-CROWN back end works without auto_LiRPA.
"""
from __future__ import annotations

import importlib
from typing import Any

_PUBLIC = {
    "VerifyOptions": "options", "BabOptions": "options",
    "Instance": "instances", "read_instances_csv": "instances", "instance_names": "instances",
    "InstanceResult": "result", "STAGES": "result", "BOUND_STAGES": "result", "VERDICTS": "result",
    "certified_by": "result",
    "verify_instance": "run.cascade", "CascadeVerifier": "run.cascade", "ModelCache": "run.models",
    "Verifier": "run.batch", "verify_instances": "run.batch", "verify_in_processes": "run.batch",
    "read_log": "run.records", "merge_summaries": "run.records",
    "stage_table": "run.tables", "instance_table": "run.tables", "margin_text": "run.tables",
    "Shard": "run.shard", "parse_shard": "run.shard", "rank_device": "run.shard", "shard_from_env": "run.shard",
    "wait_for_all_ranks": "run.shard",
    "AbcrownJob": "abcrown.config", "read_abcrown_config": "abcrown.config",
    "LayerGraph": "network.layers", "load_onnx_graph": "network.onnx_import", "module_graph": "network.module_import",
    "VerificationSpec": "spec",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_PUBLIC[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
