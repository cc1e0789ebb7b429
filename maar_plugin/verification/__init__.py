"""Complete verification of ONNX networks against VNN-LIB properties (``maar verify``).

Flow: ``onnx_loader`` turns the ONNX graph into a :class:`ReluNetwork` (dense float64 affine maps with
ReLUs between; our own converter, see there why not onnx2torch) → ``cascade`` runs centre point, IBP,
PGD, CROWN, alpha-CROWN (auto_LiRPA on the network as ``nn.Sequential(Linear, ReLU, ...)``), the LP
relaxation (``lp_bounds``; PGD restarts at its minimiser) and the exact ``milp`` stage (HiGHS) →
``counterexample`` confirms every ``sat`` on the original file with onnxruntime → ``batch`` writes
VNN-COMP result files, a JSON-lines log and a CSV summary, whole or as one ``shard`` of the instances
(SLURM array task, torchrun rank, local worker) → ``report``.

Public API: :func:`verify_instance` for one (ONNX, VNN-LIB) pair, :func:`verify_instances` for a batch
written to a results folder, :class:`InstanceResult` with the verdict, deciding stage and per-stage
states, and :func:`certified_by` for cumulative per-stage counts. ``abcrown_backend`` runs a user's
α,β-CROWN in place of the cascade (a :class:`Verifier`), with the same folder, log and resume.
"""
from maar_plugin.verification.abcrown_config import AbcrownJob, read_abcrown_config
from maar_plugin.verification.batch import (Instance, Verifier, merge_summaries, read_instances_csv, read_log,
                                           verify_in_processes, verify_instances)
from maar_plugin.verification.cascade import ModelCache, VerifyOptions, verify_instance
from maar_plugin.verification.network import ReluNetwork
from maar_plugin.verification.dense import load_onnx_network
from maar_plugin.verification.report import instance_table, stage_table
from maar_plugin.verification.result import BOUND_STAGES, STAGES, InstanceResult, certified_by
from maar_plugin.verification.shard import Shard, parse_shard, rank_device, shard_from_env, wait_for_all_ranks

__all__ = [
    "AbcrownJob", "BOUND_STAGES", "Instance", "InstanceResult", "ModelCache", "ReluNetwork", "STAGES", "Shard",
    "Verifier", "VerifyOptions", "certified_by", "instance_table", "load_onnx_network", "merge_summaries", "parse_shard",
    "rank_device", "read_abcrown_config", "read_instances_csv", "read_log", "shard_from_env", "stage_table",
    "verify_in_processes", "verify_instance", "verify_instances", "wait_for_all_ranks",
]
