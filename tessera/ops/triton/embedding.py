"""out[i] = weight[ids[i]]: the token embedding lookup.

F.embedding (index_select) takes 7.7 us for 16 ids from llama3-8b's 128256 x 4096 table on the
H200 (one thread walks every id in turn), 2.0 us for one id; advanced indexing takes 1.5 us for
16 ids but 2.8 for one (benchmarks/results/2026-11-24_h200_s9_small_kernels.json). This kernel,
one program per (id, BLOCK columns), is 1.3-1.9 us from 1 to 256 ids: the first kernel of every
decode graph and of every prefill's first graph piece.
An id outside [0, rows) reads nothing and gives a zero row (the engine rejects such prompt ids
before they get here; the kernel only keeps a bad id from reading outside the table).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _embedding_kernel(ids_ptr, w_ptr, out_ptr, ROWS, H, stride_w, stride_out,
                      BLOCK: tl.constexpr):
    token = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    row = tl.load(ids_ptr + token).to(tl.int64)
    mask = (offs < H) & (row >= 0) & (row < ROWS)
    values = tl.load(w_ptr + row * stride_w + offs, mask=mask, other=0.0)
    tl.store(out_ptr + token.to(tl.int64) * stride_out + offs, values, mask=offs < H)


def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """ids [T] (integers) -> [T, H] rows of weight [rows, H] (unit stride along H)."""
    assert ids.dim() == 1 and weight.dim() == 2 and weight.stride(1) == 1, (
        ids.shape, weight.shape, weight.stride())
    t, h = ids.shape[0], weight.shape[1]
    out = torch.empty(t, h, dtype=weight.dtype, device=weight.device)
    if t == 0 or h == 0:
        return out
    _embedding_kernel[(t, triton.cdiv(h, BLOCK))](ids, weight, out, weight.shape[0], h,
                                                   weight.stride(0), out.stride(0), BLOCK=BLOCK,
                                                   num_warps=4)
    return out


__all__ = ["embedding"]
