"""Triton kernel of `tessera::apply_token_bitmask` (see tessera.ops.bitmask for the contract).

Grid (B, ceil(V / BLOCK)): each program reads BLOCK logits of one row and the BLOCK / 32 mask
words that cover them, and writes the logit or -inf. One read and one write of the logits; the
mask is 1/32 of their size.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096


@triton.jit
def _bitmask_kernel(logits_ptr, mask_ptr, out_ptr, V, W, stride_logits, stride_mask,
                    stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    block = tl.program_id(1)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    in_row = offs < V
    word_index = offs // 32
    words = tl.load(mask_ptr + row.to(tl.int64) * stride_mask + word_index,
                    mask=in_row & (word_index < W), other=0)
    allowed = ((words >> (offs % 32)) & 1) != 0
    values = tl.load(logits_ptr + row.to(tl.int64) * stride_logits + offs, mask=in_row)
    # select in float32 (exact for bf16/fp16 values, and -inf converts exactly back)
    out = tl.where(allowed, values.to(tl.float32), float("-inf"))
    tl.store(out_ptr + row.to(tl.int64) * stride_out + offs,
             out.to(out_ptr.dtype.element_ty), mask=in_row)


def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits [B, V] (unit stride along V), bitmask int32 [B, W] -> masked copy."""
    assert logits.dim() == 2 and logits.stride(1) == 1, (logits.shape, logits.stride())
    bitmask = bitmask.to(device=logits.device)
    if bitmask.stride(-1) != 1:
        bitmask = bitmask.contiguous()
    rows, v = logits.shape
    out = torch.empty((rows, v), dtype=logits.dtype, device=logits.device)
    if rows == 0 or v == 0:
        return out
    grid = (rows, triton.cdiv(v, BLOCK))
    _bitmask_kernel[grid](logits, bitmask, out, v, bitmask.shape[1], logits.stride(0),
                          bitmask.stride(0), out.stride(0), BLOCK=BLOCK, num_warps=8)
    return out


__all__ = ["BLOCK", "apply_token_bitmask"]
