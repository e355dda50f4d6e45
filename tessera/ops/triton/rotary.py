"""Rotary embedding (NeoX rotate-half layout) for q and k in one launch, out of place.

Out of place because q and k arrive as strided views of the fused QKV projection: writing fresh
contiguous outputs costs the same traffic as an in-place update, gives attention contiguous heads,
and keeps the custom op free of mutation (no functionalization copies under torch.compile).
Grid: (tokens, head blocks of q then head blocks of k); each program rotates BLOCK_H heads of one
token with that token's cos/sin row from the float32 cache.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.ops.triton.pdl import launch_options, use_pdl


@triton.jit
def rope_cos_sin(cache_ptr, cache_stride, pos, dims, dim_mask, out_ptr, HALF: tl.constexpr):
    """cos and sin ([1, BLOCK_D] float32) of one position from the float32 cache, rounded to the
    output dtype first as native casts them to the activation dtype before multiplying. Shared with
    qk_norm_rope so both kernels round exactly as the native rotary does."""
    dtype = out_ptr.dtype.element_ty
    cos = tl.load(cache_ptr + pos * cache_stride + dims, mask=dim_mask, other=0.0)
    sin = tl.load(cache_ptr + pos * cache_stride + HALF + dims, mask=dim_mask, other=0.0)
    cos = cos.to(tl.float32).to(dtype).to(tl.float32)[None, :]
    sin = sin.to(tl.float32).to(dtype).to(tl.float32)[None, :]
    return cos, sin


@triton.jit
def rope_store(dst, x1, x2, cos, sin, mask, HALF: tl.constexpr):
    """Stores the rotated halves (float32 x1 | x2) at dst / dst + HALF in dst's dtype.

    native: x * cos + rotate_half(x) * sin with rotate_half(x) = cat(-x2, x1); each product is
    rounded to the activation dtype where native rounds, keeping both paths bit-compatible."""
    dtype = dst.dtype.element_ty
    o1 = (x1 * cos).to(dtype).to(tl.float32) + (-x2 * sin).to(dtype).to(tl.float32)
    o2 = (x2 * cos).to(dtype).to(tl.float32) + (x1 * sin).to(dtype).to(tl.float32)
    tl.store(dst, o1.to(dtype), mask=mask)
    tl.store(dst + HALF, o2.to(dtype), mask=mask)


@triton.jit
def _rotate_block(x_ptr, out_ptr, x_row, out_row, x_head_stride, out_head_stride, n_heads,
                  head0, cos, sin, dims, dim_mask,
                  HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = head0 + tl.arange(0, BLOCK_H)
    mask = (heads < n_heads)[:, None] & dim_mask[None, :]
    src = x_ptr + x_row + heads[:, None] * x_head_stride + dims[None, :]
    dst = out_ptr + out_row + heads[:, None] * out_head_stride + dims[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    rope_store(dst, x1, x2, cos, sin, mask, HALF)


@triton.jit
def _rotary_kernel(pos_ptr, cache_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr,
                   q_tok_stride, q_head_stride, k_tok_stride, k_head_stride,
                   qo_tok_stride, qo_head_stride, ko_tok_stride, ko_head_stride,
                   cache_stride, n_q_heads, n_k_heads, n_q_blocks,
                   HALF: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_H: tl.constexpr,
                   PDL: tl.constexpr):
    if PDL:  # see tessera.ops.triton.pdl
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    tok = tl.program_id(0).to(tl.int64)
    block = tl.program_id(1)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    dims = tl.arange(0, BLOCK_D)
    dim_mask = dims < HALF
    cos, sin = rope_cos_sin(cache_ptr, cache_stride, pos, dims, dim_mask, q_out_ptr, HALF)
    if block < n_q_blocks:
        _rotate_block(q_ptr, q_out_ptr, tok * q_tok_stride, tok * qo_tok_stride, q_head_stride,
                      qo_head_stride, n_q_heads, block * BLOCK_H, cos, sin, dims, dim_mask,
                      HALF, BLOCK_H)
    else:
        _rotate_block(k_ptr, k_out_ptr, tok * k_tok_stride, tok * ko_tok_stride, k_head_stride,
                      ko_head_stride, n_k_heads, (block - n_q_blocks) * BLOCK_H, cos, sin, dims,
                      dim_mask, HALF, BLOCK_H)


def last_dim_contiguous(x: torch.Tensor) -> torch.Tensor:
    """x itself when its last dimension is contiguous (the kernels take any other strides)."""
    return x if x.stride(-1) == 1 else x.contiguous()


def rope_launch(n_tokens: int, n_q_heads: int, n_k_heads: int, head_dim: int
                ) -> tuple[tuple[int, int], int, int, int]:
    """(grid, BLOCK_D, BLOCK_H, q head blocks) of the rotary-style kernels: one program per
    token and block of up to 8 heads, q's blocks first, then k's."""
    block_d = triton.next_power_of_2(head_dim // 2)
    block_h = min(8, triton.next_power_of_2(max(n_q_heads, n_k_heads)))
    n_q_blocks = triton.cdiv(n_q_heads, block_h)
    return (n_tokens, n_q_blocks + triton.cdiv(n_k_heads, block_h)), block_d, block_h, n_q_blocks


def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T], q [T, Hq, D], k [T, Hk, D], cos_sin_cache [max_pos, D] (cos | sin)."""
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] == positions.shape[0]
    head_dim = q.shape[-1]
    assert head_dim % 2 == 0 and k.shape[-1] == head_dim and cos_sin_cache.shape[-1] == head_dim
    assert q.dtype == k.dtype, "q and k must share a dtype"
    q, k, cache = (last_dim_contiguous(t) for t in (q, k, cos_sin_cache))
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    n_tokens, n_q_heads, n_k_heads = q.shape[0], q.shape[1], k.shape[1]
    if n_tokens == 0:
        return q_out, k_out
    grid, block_d, block_h, n_q_blocks = rope_launch(n_tokens, n_q_heads, n_k_heads, head_dim)
    pdl = use_pdl(q.device)
    _rotary_kernel[grid](
        positions, cache, q, k, q_out, k_out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        cache.stride(0), n_q_heads, n_k_heads, n_q_blocks,
        HALF=head_dim // 2, BLOCK_D=block_d, BLOCK_H=block_h, PDL=pdl, num_warps=4,
        **launch_options(pdl))
    return q_out, k_out
