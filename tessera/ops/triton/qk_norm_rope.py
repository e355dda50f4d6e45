"""Per-head RMSNorm of q and k followed by rotary embedding (NeoX layout), in one launch.

Qwen3 normalizes every query and key head before rotary. Done op by op that is three launches
(q-norm, k-norm, rotary) and two round trips of q and k through memory; at one decode token the
launches, not the bytes, are the cost. Here one program takes BLOCK_H heads of one token: it loads
each head once (as its two rotary halves), normalizes it over the whole head, applies the weight,
rotates, and writes the result out of place (contiguous, like the rotary op).

Rounding follows the native path step for step (`RMSNorm.forward_native` then
`RotaryEmbedding.forward_native`): the normalized value is rounded to the input dtype before the
weight multiply, the weighted value to the output dtype, and each rotary product to the output
dtype before the sum. Statistics are float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.ops.triton.pdl import launch_options, use_pdl
from tessera.ops.triton.rotary import last_dim_contiguous, rope_cos_sin, rope_launch, rope_store


@triton.jit
def _norm_rotate_block(x_ptr, w_ptr, out_ptr, x_row, out_row, x_head_stride, out_head_stride,
                       n_heads, head0, cos, sin, dims, dim_mask, eps,
                       HALF: tl.constexpr, BLOCK_H: tl.constexpr):
    heads = head0 + tl.arange(0, BLOCK_H)
    mask = (heads < n_heads)[:, None] & dim_mask[None, :]
    src = x_ptr + x_row + heads[:, None] * x_head_stride + dims[None, :]
    dst = out_ptr + out_row + heads[:, None] * out_head_stride + dims[None, :]
    in_dtype = x_ptr.dtype.element_ty
    dtype = out_ptr.dtype.element_ty
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    variance = (tl.sum(x1 * x1, axis=1) + tl.sum(x2 * x2, axis=1)) / (2 * HALF)
    rstd = tl.rsqrt(variance + eps)[:, None]
    w1 = tl.load(w_ptr + dims, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    w2 = tl.load(w_ptr + HALF + dims, mask=dim_mask, other=0.0).to(tl.float32)[None, :]
    # RMSNorm: weight * (x * rstd).to(input dtype), in the promoted (output) dtype
    y1 = (w1 * (x1 * rstd).to(in_dtype).to(tl.float32)).to(dtype).to(tl.float32)
    y2 = (w2 * (x2 * rstd).to(in_dtype).to(tl.float32)).to(dtype).to(tl.float32)
    # rotary: y * cos + rotate_half(y) * sin, each product rounded where native rounds
    rope_store(dst, y1, y2, cos, sin, mask, HALF)


@triton.jit
def _qk_norm_rope_kernel(pos_ptr, cache_ptr, q_ptr, k_ptr, q_w_ptr, k_w_ptr, q_out_ptr,
                         k_out_ptr,
                         q_tok_stride, q_head_stride, k_tok_stride, k_head_stride,
                         qo_tok_stride, qo_head_stride, ko_tok_stride, ko_head_stride,
                         cache_stride, n_q_heads, n_k_heads, n_q_blocks, eps,
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
    # rounded to the output dtype: the activation dtype of native rotary (the normalized q's)
    cos, sin = rope_cos_sin(cache_ptr, cache_stride, pos, dims, dim_mask, q_out_ptr, HALF)
    if block < n_q_blocks:
        _norm_rotate_block(q_ptr, q_w_ptr, q_out_ptr, tok * q_tok_stride, tok * qo_tok_stride,
                           q_head_stride, qo_head_stride, n_q_heads, block * BLOCK_H, cos, sin,
                           dims, dim_mask, eps, HALF, BLOCK_H)
    else:
        _norm_rotate_block(k_ptr, k_w_ptr, k_out_ptr, tok * k_tok_stride, tok * ko_tok_stride,
                           k_head_stride, ko_head_stride, n_k_heads,
                           (block - n_q_blocks) * BLOCK_H, cos, sin, dims, dim_mask, eps, HALF,
                           BLOCK_H)


def output_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """Native RMSNorm returns `weight * x.to(x.dtype)`: the promotion of the two dtypes."""
    return torch.promote_types(x.dtype, weight.dtype)


def qk_norm_rope(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                 q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """positions [T]; q [T, Hq, D], k [T, Hk, D] (any token/head strides, contiguous last dim);
    q_weight/k_weight [D]; cos_sin_cache [max_pos, D] (cos | sin). Returns new contiguous
    (rope(rms_norm(q) * q_weight), rope(rms_norm(k) * k_weight))."""
    assert q.dim() == 3 and k.dim() == 3 and q.shape[0] == k.shape[0] == positions.shape[0]
    head_dim = q.shape[-1]
    assert head_dim % 2 == 0 and k.shape[-1] == head_dim and cos_sin_cache.shape[-1] == head_dim
    assert q_weight.shape == (head_dim,) and k_weight.shape == (head_dim,)
    assert q.dtype == k.dtype and q_weight.dtype == k_weight.dtype, "q/k and weights share dtypes"
    q, k, cache = (last_dim_contiguous(t) for t in (q, k, cos_sin_cache))
    dtype = output_dtype(q, q_weight)
    q_out = torch.empty(q.shape, dtype=dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=dtype, device=k.device)
    n_tokens, n_q_heads, n_k_heads = q.shape[0], q.shape[1], k.shape[1]
    if n_tokens == 0:
        return q_out, k_out
    grid, block_d, block_h, n_q_blocks = rope_launch(n_tokens, n_q_heads, n_k_heads, head_dim)
    pdl = use_pdl(q.device)
    _qk_norm_rope_kernel[grid](
        positions, cache, q, k, q_weight, k_weight, q_out, k_out,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        q_out.stride(0), q_out.stride(1), k_out.stride(0), k_out.stride(1),
        cache.stride(0), n_q_heads, n_k_heads, n_q_blocks, eps,
        HALF=head_dim // 2, BLOCK_D=block_d, BLOCK_H=block_h, PDL=pdl, num_warps=4,
        **launch_options(pdl))
    return q_out, k_out
