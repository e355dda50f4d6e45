"""argmax(x): the greedy token of each row of [B, V] logits.

The sampler's greedy rows and the decode graphs' argmax call this. On CUDA with Triton it is
tessera.ops.triton.argmax (two small launches; torch.argmax over llama3-8b's 128256-entry rows
takes 26.5 us on the H200, on the critical path of every greedy step); elsewhere, and under
`native_ops()` / TESSERA_NATIVE_OPS=1, torch.argmax. Same result either way: the index of each
row's first maximum, NaN counting as the largest value.
"""
from __future__ import annotations

import torch

from tessera.ops.base import triton_available, use_native_ops


def use_triton_argmax(x: torch.Tensor) -> bool:
    """Whether `argmax(x)` takes the Triton kernels (a 2-D float CUDA tensor with unit stride
    along its rows, Triton installed, native ops not forced)."""
    return (x.is_cuda and x.dim() == 2 and x.stride(1) == 1 and x.shape[1] > 0
            and x.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and triton_available() and not use_native_ops())


def argmax(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, V] -> int64 [B], as x.argmax(dim=-1); into `out` (int64 [B]) when given."""
    if use_triton_argmax(x) and (out is None or out.is_contiguous()):
        from tessera.ops.triton.argmax import argmax as triton_argmax

        return triton_argmax(x, out)
    if out is None:
        return x.argmax(dim=-1)
    return torch.argmax(x, dim=-1, out=out)


__all__ = ["argmax", "use_triton_argmax"]
