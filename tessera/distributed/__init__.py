"""Process groups. Single-process for now: tp_rank 0 of tp_size 1 unless initialized."""
from __future__ import annotations

_tp_rank, _tp_size = 0, 1


def init_tensor_parallel(rank: int, size: int) -> None:
    global _tp_rank, _tp_size
    _tp_rank, _tp_size = rank, size


def get_tp_rank() -> int:
    return _tp_rank


def get_tp_size() -> int:
    return _tp_size
