"""Weak references to tensors: same storage, no ownership.

The piecewise graph runner captures sizes from largest to smallest in one memory pool. The last
piece's output of a capture must stay readable (it is what replay returns) but must not keep its
memory alive, or the next, smaller capture cannot reuse that memory. `weak_ref_tensor` builds a
tensor over the same bytes from a raw data pointer: the storage it gets has no deleter, so it never
frees (or pins) the allocation; the pool's owner decides its lifetime.

How: `torch._C._construct_storage_from_data_pointer(ptr, device, nbytes)` (present in torch 2.1+,
what inductor's cudagraph trees use for the same purpose) makes a non-owning storage on any device
with real data pointers (CPU, CUDA, MUSA); `Tensor.set_` puts the original view on it. No C++
extension is needed.

The caller guarantees the memory outlives every use of the weak tensor. Reading one after its
memory is freed and reused returns whatever lives there now.
"""
from __future__ import annotations

from typing import Any

import torch
from torch._subclasses.fake_tensor import is_fake


def weak_ref_tensor(tensor: Any) -> Any:
    """A tensor aliasing `tensor`'s memory (same dtype, size, stride, offset) without owning it.

    Non-tensors are returned unchanged, and so are fake/meta tensors, which have no memory.
    """
    if not isinstance(tensor, torch.Tensor):
        return tensor
    if is_fake(tensor) or tensor.device.type == "meta":
        return tensor
    storage = tensor.untyped_storage()
    weak_storage = torch._C._construct_storage_from_data_pointer(
        storage.data_ptr(), tensor.device, storage.nbytes())
    alias = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
    return alias.set_(weak_storage, tensor.storage_offset(), tensor.size(), tensor.stride())


def weak_ref_tensors(obj: Any) -> Any:
    """`weak_ref_tensor` over a tensor or (nested) tuples/lists of them; structure is kept."""
    if isinstance(obj, torch.Tensor):
        return weak_ref_tensor(obj)
    if isinstance(obj, tuple):
        items = [weak_ref_tensors(item) for item in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [weak_ref_tensors(item) for item in obj]
    return obj


__all__ = ["weak_ref_tensor", "weak_ref_tensors"]
