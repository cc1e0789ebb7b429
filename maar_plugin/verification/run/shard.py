"""Shares of a batch of instances for parallel verification: SLURM job-array tasks or torchrun ranks.

Shards count from 0, like ``RANK`` and ``SLURM_ARRAY_TASK_ID`` with ``--array=0-(N-1)``: instance i of
the csv (counting from 0) goes to shard i mod N. Every shard writes its own log and summary
(``log.shard-K-of-N.jsonl``, ``summary.shard-K-of-N.csv``) into the same results folder, so shards
never write to one file and a folder read later merges them.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

from maar_plugin.errors import MaarError

T = TypeVar("T")
_SHARD_FILE = re.compile(r"\.shard-(\d+)-of-(\d+)$")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` of ``count``: the instances whose position in the csv is ``index`` mod ``count``."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise MaarError(f"shard {self.index}/{self.count}: need 0 <= K < N (shards count from 0)")

    def select(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index::self.count])

    @property
    def suffix(self) -> str:
        """What the shard's file names carry before their extension: ``.shard-K-of-N``."""
        return f".shard-{self.index}-of-{self.count}"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """``"K/N"`` with 0 <= K < N, e.g. ``--shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT``."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match:
        raise MaarError(f"--shard must be K/N (shard K of N, counting from 0), got {text!r}")
    index, count = int(match[1]), int(match[2])
    if not 0 <= index < count:
        raise MaarError(f"--shard {text}: need 0 <= K < N (shards count from 0)")
    return Shard(index, count)


def shard_from_env(environ: Mapping[str, str] = os.environ) -> Shard | None:
    """The shard of this process under ``torchrun`` (``RANK`` of ``WORLD_SIZE`` > 1), else None."""
    world, rank = environ.get("WORLD_SIZE"), environ.get("RANK")
    if world is None or rank is None:
        return None
    try:
        world_size, rank_index = int(world), int(rank)
    except ValueError:
        raise MaarError(f"RANK={rank!r} and WORLD_SIZE={world!r} must be integers") from None
    if world_size <= 1:
        return None
    if not 0 <= rank_index < world_size:
        raise MaarError(f"RANK={rank_index} is outside 0..WORLD_SIZE-1={world_size - 1}")
    return Shard(rank_index, world_size)


def rank_device(device: str, environ: Mapping[str, str] = os.environ) -> str:
    """One GPU per torchrun rank: plain ``cuda`` becomes ``cuda:LOCAL_RANK`` where LOCAL_RANK is set."""
    local_rank = environ.get("LOCAL_RANK")
    if device != "cuda" or local_rank is None:
        return device
    if not local_rank.isdigit():
        raise MaarError(f"LOCAL_RANK={local_rank!r} must be a non-negative integer")
    return f"cuda:{local_rank}"


def wait_for_all_ranks(environ: Mapping[str, str] = os.environ) -> bool:
    """Under torchrun, block until every rank gets here (a gloo barrier, so rank 0 can merge the shards);
    False, at once, where there is no torchrun rendezvous (``MASTER_ADDR`` unset)."""
    if "MASTER_ADDR" not in environ:
        return False
    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=timedelta(days=7))  # ranks may finish their shares hours apart
    try:
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return True


def shard_of_stem(stem: str) -> Shard | None:
    """The shard a file stem names (``log.shard-1-of-4`` → 1/4); None for an unsharded ``log``."""
    match = _SHARD_FILE.search(stem)
    return Shard(int(match[1]), int(match[2])) if match else None
