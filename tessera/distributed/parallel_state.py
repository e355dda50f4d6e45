"""Process groups: the world and the tensor-parallel group, created once per process.

A single-process engine never calls `init_distributed`: every getter then answers rank 0 of a
group of 1 and the communication ops are identities. Under tensor parallelism the engine starts
one process per rank and each calls `init_distributed` with the platform's backend (nccl on
CUDA, mccl on MUSA, gloo on CPU) before building its model.

Besides the TP group (the device backend; its collectives time out after `timeout_s`) every
process joins a gloo group over all ranks for the control plane: rank 0's batch plans and the
start-up agreements (KV pool size). Its timeout is long, because ranks other than 0 wait on it
for as long as the engine is idle; a rank that dies still fails it at once (its sockets close).
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
from collections.abc import Iterator

import torch.distributed as dist

logger = logging.getLogger(__name__)

# how long the other ranks wait on the control plane for rank 0's next plan (an idle engine)
CONTROL_TIMEOUT = datetime.timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class GroupInfo:
    """One process group as the layers see it: this process's rank in it and its size."""

    rank: int = 0
    size: int = 1
    group: object | None = None  # the torch.distributed ProcessGroup; None for a group of 1


_tp = GroupInfo()
_control = GroupInfo()
# --moe-dense-tp-size: None shards an MoE model's dense MLP layers over the TP group like every
# other layer; 1 replicates them and scatters the tokens over the attention-TP group around them
_moe_dense_tp_size: int | None = None


def init_distributed(rank: int, world_size: int, tp_size: int, backend: str, init_method: str,
                     timeout_s: float = 60.0, moe_dense_tp_size: int | None = None) -> None:
    """Joins the world and makes the TP groups (consecutive ranks; world = k * tp_size) and the
    gloo control group. Every start-up collective fails after `timeout_s`, naming what it
    waited for, rather than hanging. `moe_dense_tp_size` is the resolved
    `--moe-dense-tp-size` (None or 1), which the layers read when they are built."""
    global _tp, _control, _moe_dense_tp_size
    if moe_dense_tp_size not in (None, 1):
        raise ValueError(f"--moe-dense-tp-size must be 1 or unset, got {moe_dense_tp_size}")
    if world_size % tp_size:
        raise ValueError(f"world size {world_size} is not a multiple of tp size {tp_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside the world of {world_size}")
    timeout = datetime.timedelta(seconds=timeout_s)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, init_method=init_method, rank=rank,
                                    world_size=world_size, timeout=timeout)
        except Exception as e:
            raise RuntimeError(
                f"rank {rank}: could not join the world of {world_size} ranks at {init_method} "
                f"within {timeout_s:.0f} s ({type(e).__name__}: {e}); check that every node was "
                f"started with the same --tp-size, --nnodes and --dist-init-addr") from e
    if dist.get_world_size() != world_size:
        raise RuntimeError(f"this process is in a world of {dist.get_world_size()} ranks, not "
                           f"{world_size}")
    first = rank - rank % tp_size
    groups = [dist.new_group(list(range(start, start + tp_size)), timeout=timeout)
              for start in range(0, world_size, tp_size)]
    _tp = GroupInfo(rank % tp_size, tp_size, groups[first // tp_size])
    _control = GroupInfo(rank, world_size,
                         dist.new_group(list(range(world_size)), backend="gloo",
                                        timeout=CONTROL_TIMEOUT))
    _moe_dense_tp_size = moe_dense_tp_size
    layout = [list(range(start, start + tp_size)) for start in range(0, world_size, tp_size)]
    logger.info("distributed: rank %d of %d, backend %s (control plane gloo), tp groups %s, "
                "tp rank %d of %d, attention tp size %d, moe dense tp size %s", rank, world_size,
                backend, layout, _tp.rank, _tp.size, _tp.size,
                moe_dense_tp_size if moe_dense_tp_size is not None else f"{tp_size} (unset)")


def destroy_distributed() -> None:
    global _tp, _control, _moe_dense_tp_size
    _tp, _control, _moe_dense_tp_size = GroupInfo(), GroupInfo(), None
    if dist.is_initialized():
        dist.destroy_process_group()


def set_tensor_parallel(rank: int, size: int) -> None:
    """Rank and size the layers shard by, without a process group (loaders and tests that
    build one rank's shards in a single process)."""
    global _tp
    _tp = GroupInfo(rank, size, _tp.group if size == _tp.size else None)


@contextlib.contextmanager
def tensor_parallel_as(rank: int, size: int) -> Iterator[None]:
    """Layers built inside shard as rank `rank` of `size` (no group); the group is restored
    after (the dummy-weight loader builds the unsharded model's shapes this way)."""
    global _tp
    saved = _tp
    _tp = GroupInfo(rank, size)
    try:
        yield
    finally:
        _tp = saved


def tp_group() -> GroupInfo:
    return _tp


def control_group() -> GroupInfo:
    """All ranks over gloo (the batch plans and start-up agreements); size 1 without a world."""
    return _control


def get_tp_rank() -> int:
    return _tp.rank


def get_tp_size() -> int:
    return _tp.size


def attn_tp_group() -> GroupInfo:
    """The group attention is tensor-parallel over. tessera has no data-parallel attention, so
    it is the TP group (attn_tp_size == tp_size); the name says which role a caller means."""
    return _tp


def get_moe_dense_tp_size() -> int | None:
    """`--moe-dense-tp-size` as this process joined the world with it (None: unset)."""
    return _moe_dense_tp_size


def tokens_scattered() -> bool:
    """True when an MoE model's dense MLP layers are replicated and run on this rank's slice of
    the tokens (`--moe-dense-tp-size 1` with an attention-TP group of more than one rank)."""
    return _moe_dense_tp_size == 1 and attn_tp_group().size > 1
