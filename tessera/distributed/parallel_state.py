"""Process groups: the world and the tensor-parallel group, created once per process.

A single-process engine never calls `init_distributed`: every getter then answers rank 0 of a
group of 1 and the communication ops are identities. Under tensor parallelism the engine starts
one process per rank and each calls `init_distributed` with the platform's backend (nccl on
CUDA, mccl on MUSA, gloo on CPU) before building its model.
"""
from __future__ import annotations

import dataclasses
import datetime
import logging

import torch.distributed as dist

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class GroupInfo:
    """One process group as the layers see it: this process's rank in it and its size."""

    rank: int = 0
    size: int = 1
    group: object | None = None  # the torch.distributed ProcessGroup; None for a group of 1


_tp = GroupInfo()


def init_distributed(rank: int, world_size: int, tp_size: int, backend: str, init_method: str,
                     timeout_s: float = 60.0) -> None:
    """Joins the world and makes the TP groups (consecutive ranks; world = k * tp_size)."""
    global _tp
    if world_size % tp_size:
        raise ValueError(f"world size {world_size} is not a multiple of tp size {tp_size}")
    if not dist.is_initialized():
        dist.init_process_group(backend, init_method=init_method, rank=rank,
                                world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    first = rank - rank % tp_size
    groups = [dist.new_group(list(range(start, start + tp_size)))
              for start in range(0, world_size, tp_size)]
    _tp = GroupInfo(rank % tp_size, tp_size, groups[first // tp_size])
    logger.info("distributed: rank %d of %d (%s), tp rank %d of %d", rank, world_size, backend,
                _tp.rank, _tp.size)


def destroy_distributed() -> None:
    global _tp
    _tp = GroupInfo()
    if dist.is_initialized():
        dist.destroy_process_group()


def set_tensor_parallel(rank: int, size: int) -> None:
    """Rank and size the layers shard by, without a process group (loaders and tests that
    build one rank's shards in a single process)."""
    global _tp
    _tp = GroupInfo(rank, size, _tp.group if size == _tp.size else None)


def tp_group() -> GroupInfo:
    return _tp


def get_tp_rank() -> int:
    return _tp.rank


def get_tp_size() -> int:
    return _tp.size
