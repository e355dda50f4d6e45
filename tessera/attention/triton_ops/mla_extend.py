"""MLA extend (prefill) attention in the absorbed form, over the latent cache.

DeepSeek-V2/V3's multi-head latent attention, with W_UK absorbed into the query and W_UV applied
after attention (by the model), is multi-query attention over one shared "head" per token: the
cached latent row [kv_lora_rank + rope_dim] = [c_kv (L dims) | rotated k_pe (R dims)]. Query head
h of a new token is [q_nope·W_UK (L dims) | rotated q_pe (R dims)], its score against a cached
token is the dot product with that token's whole latent row, and the value is the row's first L
dims. So

    out[i, h] = softmax_j(scaling * q[i, h] · latent_j) · latent_j[:L]

over the request's cached prefix and its new tokens up to i (causal), every key read through
`req_to_token` (the new tokens' latents are already stored and their slots recorded).

Grid (head_blocks, token_blocks, batch). Because every head reads the same key rows, a program
takes BLOCK_T new tokens x BLOCK_H query heads as one block of BLOCK_T * BLOCK_H query rows
(row r: token r // BLOCK_H, head r % BLOCK_H) and loads each latent tile once for all of them;
the scores are one [rows, keys] matmul over the L latent dims plus one over the R rope dims (two
dots, so neither part is padded up to the next power of two of L + R). Heads go into a block
first (BLOCK_H up to the block's rows), tokens fill the rest: rows of the same token share one
query position, so fewer of them are masked on the causal diagonal. The key positions split like
the MHA extend kernel's: those before the block's first token (seen by every row, no causal
mask), then the rest up to its last token under the mask kpos <= qpos.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.attention.triton_ops.extend_attention import softmax_step

_LOG2E = 1.4426950408889634


@triton.jit
def attend_latent(
    q_nope, q_pe, acc, l_i, m_i, qpos, cache_ptr, table_row_ptr, key_start, key_end, qk_scale,
    stride_cs, offs_l, mask_l, offs_r, mask_r, KV_LORA_RANK: tl.constexpr, CAUSAL: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Online-softmax update of (acc [rows, BLOCK_L], l_i, m_i) with the latent rows at key
    positions [key_start, key_end) of one request (position n is cache row table_row_ptr[n]).

    Scores: q_nope · c_kv + q_pe · k_pe, scaled to base 2; values: c_kv. CAUSAL: row r sees key
    n only if n <= qpos[r]. The first tile any row sees must hold a key visible to it (callers
    start an unmasked range at a key every row sees, a causal one at or before the first row's
    position), so the running max is finite from the first update on."""
    for n in range(key_start, key_end, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < key_end
        slots = tl.load(table_row_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
        rows = cache_ptr + slots[:, None] * stride_cs
        c_kv = tl.load(rows + offs_l[None, :], mask=mask_n[:, None] & mask_l[None, :], other=0.0)
        k_pe = tl.load(rows + KV_LORA_RANK + offs_r[None, :],
                       mask=mask_n[:, None] & mask_r[None, :], other=0.0)
        qk = tl.dot(q_nope, tl.trans(c_kv.to(q_nope.dtype)), input_precision=DOT_PRECISION)
        qk += tl.dot(q_pe, tl.trans(k_pe.to(q_pe.dtype)), input_precision=DOT_PRECISION)
        qk = qk * qk_scale
        if CAUSAL:
            visible = mask_n[None, :] & (offs_n[None, :] <= qpos[:, None])
        else:
            visible = mask_n[None, :]
        qk = tl.where(visible, qk, float("-inf"))
        acc, l_i, m_i = softmax_step(qk, q_nope.dtype, c_kv, acc, l_i, m_i, DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def _mla_extend_kernel(
    q_ptr, cache_ptr, out_ptr,
    req_to_token_ptr, req_pool_indices_ptr, prefix_lens_ptr, extend_lens_ptr, extend_starts_ptr,
    qk_scale,  # softmax scale * log2(e)
    stride_qt, stride_qh, stride_cs, stride_ot, stride_oh, stride_table,
    NUM_HEADS: tl.constexpr, KV_LORA_RANK: tl.constexpr, ROPE_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """out[tokens, heads of this block] for BLOCK_T new tokens of one request (see the module
    docstring); rows past the request's new tokens, or past the heads, are not stored."""
    head_block = tl.program_id(0)
    # last token blocks first: under the causal mask they see the most keys, so starting them
    # early shortens the tail of the launch
    t_block = tl.num_programs(1) - 1 - tl.program_id(1)
    b = tl.program_id(2)
    extend_len = tl.load(extend_lens_ptr + b)
    t_start = t_block * BLOCK_T
    if t_start >= extend_len:  # the grid is sized for the longest request
        return
    first_token = tl.load(extend_starts_ptr + b).to(tl.int64)
    prefix = tl.load(prefix_lens_ptr + b)
    row = tl.load(req_pool_indices_ptr + b).to(tl.int64)

    offs = tl.arange(0, BLOCK_T * BLOCK_H)
    offs_t = t_start + offs // BLOCK_H
    heads = head_block * BLOCK_H + offs % BLOCK_H
    mask_rows = (offs_t < extend_len) & (heads < NUM_HEADS)
    offs_l = tl.arange(0, BLOCK_L)
    mask_l = offs_l < KV_LORA_RANK
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < ROPE_DIM
    q_rows = q_ptr + (first_token + offs_t)[:, None] * stride_qt + heads[:, None] * stride_qh
    q_nope = tl.load(q_rows + offs_l[None, :], mask=mask_rows[:, None] & mask_l[None, :],
                     other=0.0)
    q_pe = tl.load(q_rows + KV_LORA_RANK + offs_r[None, :],
                   mask=mask_rows[:, None] & mask_r[None, :], other=0.0)
    qpos = prefix + offs_t

    acc = tl.zeros([BLOCK_T * BLOCK_H, BLOCK_L], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_T * BLOCK_H], dtype=tl.float32)
    m_i = tl.full([BLOCK_T * BLOCK_H], float("-inf"), dtype=tl.float32)
    table_row_ptr = req_to_token_ptr + row * stride_table
    shared_end = prefix + t_start  # keys before the block's first token: seen by all its rows
    diagonal_end = prefix + tl.minimum(t_start + BLOCK_T, extend_len)
    acc, l_i, m_i = attend_latent(
        q_nope, q_pe, acc, l_i, m_i, qpos, cache_ptr, table_row_ptr, 0, shared_end, qk_scale,
        stride_cs, offs_l, mask_l, offs_r, mask_r, KV_LORA_RANK=KV_LORA_RANK, CAUSAL=False,
        BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)
    acc, l_i, m_i = attend_latent(
        q_nope, q_pe, acc, l_i, m_i, qpos, cache_ptr, table_row_ptr, shared_end, diagonal_end,
        qk_scale, stride_cs, offs_l, mask_l, offs_r, mask_r, KV_LORA_RANK=KV_LORA_RANK,
        CAUSAL=True, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)
    o = acc / l_i[:, None]  # every row saw at least key 0 of its request
    tl.store(out_ptr + (first_token + offs_t)[:, None] * stride_ot + heads[:, None] * stride_oh
             + offs_l[None, :], o.to(out_ptr.dtype.element_ty),
             mask=mask_rows[:, None] & mask_l[None, :])


def mla_extend_tile(num_heads: int, kv_lora_rank: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_H, BLOCK_T, BLOCK_N, num_warps, num_stages): query rows per program 32 at
    DeepSeek's 512 latent dims, 64 below 256; heads first, tokens for the rest of the rows.
    At 512 dims (the fp32 accumulator is rows x 512) sm_90's ptxas fits 32 rows, 32-key tiles
    and 8 warps in 207 registers without spilling (86 KB of shared memory); 64 rows, or 4 warps,
    spill. Not timed on a GPU yet."""
    if kv_lora_rank > 256:
        rows, block_n, warps, stages = 32, 32, 8, 2
    else:
        rows, block_n, warps, stages = 64, 64, 4, 2
    block_h = min(rows, triton.next_power_of_2(num_heads))
    return block_h, rows // block_h, block_n, warps, stages


def mla_extend_attention(
    q: torch.Tensor, latent_cache: torch.Tensor, out: torch.Tensor, req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor, extend_lens: torch.Tensor,
    extend_starts: torch.Tensor, max_extend_len: int, scaling: float,
    tile: tuple[int, int, int, int, int] | None = None,
) -> None:
    """Causal absorbed-MLA attention of a batch's new tokens over their cached prefix and
    themselves (see the module docstring).

    q [T, H, L + R] (only the rows listed by extend_starts/extend_lens are read); latent_cache
    [slots, L + R] already holding the new tokens' latents; out [T, H, L] (only the real rows
    are written); req_to_token [rows, max_ctx] int32 holding every key's slot, the new tokens'
    included; req_pool_indices [B] int64; prefix_lens, extend_lens, extend_starts [B] int32;
    max_extend_len: host-side max of extend_lens (sizes the grid). L = out.shape[-1]. `tile`:
    `mla_extend_tile`'s settings, to override them (tests). The last dimension of every tensor
    must be contiguous.
    """
    num_tokens, num_heads, qk_dim = q.shape
    kv_lora_rank = out.shape[-1]
    rope_dim = qk_dim - kv_lora_rank
    assert rope_dim > 0 and latent_cache.shape[-1] == qk_dim, (q.shape, latent_cache.shape,
                                                                out.shape)
    assert out.shape[:2] == (num_tokens, num_heads), (out.shape, q.shape)
    for t in (q, latent_cache, out, req_to_token):
        assert t.stride(-1) == 1, "the last dimension must be contiguous"
    batch = req_pool_indices.shape[0]
    if batch == 0 or max_extend_len == 0:
        return
    block_h, block_t, block_n, warps, stages = tile or mla_extend_tile(num_heads, kv_lora_rank)
    if q.dtype == torch.float32:  # (tests) fp32 tiles of 512 dims: one stage fits shared memory
        stages = 1
    grid = (triton.cdiv(num_heads, block_h), triton.cdiv(max_extend_len, block_t), batch)
    _mla_extend_kernel[grid](
        q, latent_cache, out, req_to_token, req_pool_indices, prefix_lens, extend_lens,
        extend_starts, scaling * _LOG2E,
        q.stride(0), q.stride(1), latent_cache.stride(0), out.stride(0), out.stride(1),
        req_to_token.stride(0),
        NUM_HEADS=num_heads, KV_LORA_RANK=kv_lora_rank, ROPE_DIM=rope_dim, BLOCK_H=block_h,
        BLOCK_T=block_t, BLOCK_L=max(16, triton.next_power_of_2(kv_lora_rank)),
        BLOCK_R=max(16, triton.next_power_of_2(rope_dim)), BLOCK_N=block_n,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=warps, num_stages=stages,
    )
