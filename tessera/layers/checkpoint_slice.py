"""A checkpoint tensor that is read only where a weight loader slices it.

Under tensor parallelism each rank needs 1/tp of most tensors. The safetensors loader hands
loaders a `CheckpointSlice` (safe_open's get_slice) instead of the tensor: `narrow` and `[a:b]`
read just those rows or columns from the file. Loaders that slice this way say so with
`@reads_checkpoint_slices`; any other loader, and a parameter without one, gets the whole tensor
(`materialize`).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class CheckpointSlice:
    def __init__(self, lazy: Any) -> None:
        self._lazy = lazy  # safetensors' PySafeSlice
        self.shape = torch.Size(lazy.get_shape())

    def dim(self) -> int:
        return len(self.shape)

    def narrow(self, dim: int, start: int, length: int) -> torch.Tensor:
        index = (slice(None),) * dim + (slice(start, start + length),)
        return self._lazy[index]

    def __getitem__(self, index: Any) -> torch.Tensor:
        return self._lazy[index]

    def materialize(self) -> torch.Tensor:
        return self._lazy[:]


def materialize(loaded: torch.Tensor | CheckpointSlice) -> torch.Tensor:
    return loaded.materialize() if isinstance(loaded, CheckpointSlice) else loaded


def reads_checkpoint_slices(loader: Callable) -> Callable:
    """Marks a weight loader that takes a CheckpointSlice (it only narrows or slices it, or
    passes it to default_weight_loader)."""
    loader.reads_checkpoint_slices = True
    return loader


def takes_slices(loader: Callable | None) -> bool:
    return bool(getattr(loader, "reads_checkpoint_slices", False))
