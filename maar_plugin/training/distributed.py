"""Data-parallel training under ``torchrun``: the ranks, each rank's share of a batch, and the collectives.

Every objective runs several passes per step through the plain model (the clean pass, attacks, the fused
IBP pass over its layers, auto_LiRPA's ``BoundedModule``), which ``DistributedDataParallel``'s hooks do not
see as one forward, and the fused IBP pass needs the bare ``nn.Sequential``. So the model is not wrapped:
after ``backward`` each rank scales its gradients by its share of the global batch and one flattened
all-reduce sums them, which gives the gradient of the global batch's mean loss for every objective whose
loss is a mean over the batch (all built-in ones), unequal shares included. With one process every
function here is the identity, so the loop reads the same for 1 and N processes.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from maar_plugin.errors import MaarError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    """This process's place among the ``world_size`` training processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def ranks_from_env(environ: Mapping[str, str] = os.environ) -> Ranks:
    """The ranks ``torchrun`` sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process where unset."""
    try:
        world_size = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local_rank = int(environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise MaarError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise MaarError(f"RANK={rank} is outside 0..WORLD_SIZE-1={world_size - 1}")
    return Ranks(rank, world_size, local_rank)


def start(ranks: Ranks, device: torch.device) -> torch.device:
    """Join the process group (nccl on CUDA, one GPU per rank by LOCAL_RANK; gloo on CPU); the rank's device."""
    if not ranks.distributed:
        return device
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        # Rank 0 evaluates alone after each epoch while the others wait at the next step's all-reduce.
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return device


def stop(ranks: Ranks) -> None:
    if ranks.distributed and dist.is_initialized():
        dist.destroy_process_group()


def outlive_main(ranks: Ranks) -> None:
    """After an error every rank meets: ranks other than 0 wait until rank 0 has exited (its connection
    closes, or the launcher stops them), so that rank 0 reports the error before the launcher stops it."""
    if not ranks.distributed or ranks.is_main:
        return
    with contextlib.suppress(Exception):
        dist.barrier()  # rank 0 never enters it


def on_main(ranks: Ranks, action: Callable[[], T]) -> T | None:
    """Run ``action`` on rank 0 only; a MaarError it raises is raised on every rank, with the same message."""
    if not ranks.distributed:
        return action()
    message, result = None, None
    if ranks.is_main:
        try:
            result = action()
        except MaarError as error:
            message = str(error)
    shared = [message]
    dist.broadcast_object_list(shared, src=0)
    if shared[0] is not None:
        raise MaarError(shared[0])
    return result


def batch_share(indices: Tensor, ranks: Ranks) -> tuple[Tensor, float]:
    """This rank's contiguous slice of a global batch and its weight (slice size / batch size).

    The slices of the ranks, in rank order, are the batch. A rank whose slice would be empty (a last batch
    smaller than the world) gets the batch's first example with weight 0, so every rank runs the step.
    """
    if not ranks.distributed:
        return indices, 1.0
    share = torch.tensor_split(indices, ranks.world_size)[ranks.rank]
    if len(share) == 0:
        return indices[:1], 0.0
    return share, len(share) / len(indices)


def sum_over_ranks(values: list[float], device: torch.device, ranks: Ranks) -> list[float]:
    """Element-wise sums over the ranks of a list of floats (one all-reduce); a NaN anywhere stays NaN."""
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def all_reduce_gradients(parameters: list[nn.Parameter], weight: float, ranks: Ranks) -> None:
    """Gradients ← Σ_ranks weight_r · gradient_r, in one flattened all-reduce (missing gradients count as 0)."""
    if not ranks.distributed or not parameters:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in parameters]
    flat = torch.cat([grad.reshape(-1) for grad in grads]) * weight
    dist.all_reduce(flat)
    offset = 0
    for parameter in parameters:
        count = parameter.numel()
        parameter.grad = flat[offset : offset + count].view_as(parameter)
        offset += count


def average_batchnorm_statistics(model: nn.Module, ranks: Ranks) -> None:
    """Running mean and variance of every BatchNorm ← their average over the ranks (one all-reduce)."""
    if not ranks.distributed:
        return
    buffers = [buffer for module in model.modules() if isinstance(module, _BatchNorm) and module.track_running_stats
               for buffer in (module.running_mean, module.running_var) if buffer is not None]
    if not buffers:
        return
    flat = torch.cat([buffer.reshape(-1) for buffer in buffers]) / ranks.world_size
    dist.all_reduce(flat)
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()


def broadcast_model(model: nn.Module, ranks: Ranks) -> None:
    """Parameters and buffers ← rank 0's, so every rank starts from the same bits."""
    if not ranks.distributed:
        return
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            dist.broadcast(tensor.data, src=0)
