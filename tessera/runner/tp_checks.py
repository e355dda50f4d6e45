"""Checks and agreements every TP rank makes before it builds its shard of the model."""
from __future__ import annotations

import torch
import torch.distributed as dist

from tessera.config.engine import ParallelConfig
from tessera.config.model import ModelConfig
from tessera.distributed import control_group, get_moe_dense_tp_size, tp_group


def check_tp_world(parallel: ParallelConfig) -> tuple[int, int]:
    """(tp rank, tp size) of this process; a clear error when the process group this process
    joined does not match --tp-size (the engine starts the ranks: tessera.engine.tp)."""
    group = tp_group()
    if parallel.tp_size != group.size or (group.size > 1 and group.group is None):
        raise RuntimeError(
            f"--tp-size {parallel.tp_size} but this process is in a tensor-parallel group of "
            f"{group.size}: a ModelRunner with tp > 1 runs in a process that joined the world "
            f"with init_distributed (the Engine starts one such process per rank)")
    if group.size > 1 and parallel.moe_dense_tp_size != get_moe_dense_tp_size():
        raise RuntimeError(
            f"--moe-dense-tp-size {parallel.moe_dense_tp_size} but this process joined the world "
            f"with {get_moe_dense_tp_size()}: pass the same value to init_distributed")
    return group.rank, group.size


def check_tp_divides(model: ModelConfig, tp_size: int) -> None:
    """What the sharded layers need of the model, checked before any weight loads. The vocab
    needs nothing: its last shard is zero-padded (tessera.layers.embedding)."""
    problems = []
    if model.num_attention_heads % tp_size:
        problems.append(f"{model.num_attention_heads} attention heads")
    kv = model.num_key_value_heads
    if kv % tp_size and tp_size % kv:
        problems.append(f"{kv} KV heads (neither divides the other)")
    if model.intermediate_size % tp_size:
        problems.append(f"intermediate size {model.intermediate_size}")
    if problems:
        raise ValueError(f"--tp-size {tp_size} does not divide the model's "
                         f"{', '.join(problems)}; pick a tp size that does")


def agree_on_min(value: int) -> int:
    """The smallest of every rank's `value` (e.g. the KV pool size each rank can afford)."""
    t = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(t, op=dist.ReduceOp.MIN, group=control_group().group)
    return int(t.item())
