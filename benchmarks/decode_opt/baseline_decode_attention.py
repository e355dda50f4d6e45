# The decode attention kernels as of commit 699f99b (store_kv + stage 1 + stage 2), kept only so
# profile_decode.py can time the pre-optimisation path next to the new one. Not used by tessera.
"""Batched decode attention over the token-granular KV cache, split-K in two stages.

Each request has one query token attending to its `seq_len` cached keys, which sit at arbitrary
slots listed in `req_to_token[req_pool_indices[b], :seq_len]`.

Stage 1 (`_decode_partial_kernel`), grid (batch, kv_heads * head_blocks, num_splits): one program
takes the query heads that share one KV head (GQA), so every K/V row is loaded once for the whole
group and the scores are a [heads, keys] matmul on the tensor cores. The program covers one key
range (split) of the request and writes a partial result: the softmax-weighted average of the
values in its range and the range's log-sum-exp.

Stage 2 (`_decode_reduce_kernel`), grid (batch, q_heads): merges the partial results of all splits
with their log-sum-exps into the final output.

With a single split (large batches already fill the device) stage 1 writes the final output
directly and stage 2 is skipped.

Why this shape works inside a CUDA graph: the number of splits is a launch constant chosen from the
batch size alone; the key range of each split is derived on the device from `seq_lens`, so nothing
about the lengths is known to, or synchronised with, the host. Splits past the end of a short
request store an empty result (log-sum-exp -inf) that stage 2 gives zero weight.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# log2(e): the kernels work in base 2 (exp2/log2 are the native instructions)
_LOG2E = 1.4426950408889634


@triton.jit
def _decode_partial_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, req_to_token_ptr, req_pool_indices_ptr, seq_lens_ptr,
    part_out_ptr, part_lse_ptr,
    qk_scale,  # softmax scale * log2(e)
    stride_qt, stride_qh,
    stride_ks, stride_kh, stride_vs, stride_vh,
    stride_table,
    stride_pob, stride_poh, stride_pos,
    stride_plb, stride_plh,
    GROUP: tl.constexpr, HEAD_BLOCKS: tl.constexpr, NUM_SPLITS: tl.constexpr,
    MIN_SPLIT_LEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Partial attention of the query heads of one KV head over one key range of one request.

    Writes part_out[b, h, split, :] (already divided by the range's softmax denominator) and
    part_lse[b, h, split] (base-2 log-sum-exp of the range's scores; -inf for an empty range).
    With NUM_SPLITS == 1, part_out is the final output (stride_pos unused) and no lse is stored.
    """
    b = tl.program_id(0)
    kv_head = tl.program_id(1) // HEAD_BLOCKS
    head_block = tl.program_id(1) % HEAD_BLOCKS
    split = tl.program_id(2)

    offs_g = head_block * BLOCK_H + tl.arange(0, BLOCK_H)  # index within the GQA group
    mask_h = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    seq_len = tl.load(seq_lens_ptr + b)
    row = tl.load(req_pool_indices_ptr + b).to(tl.int64)
    # Split length from the device-side seq_len: at least MIN_SPLIT_LEN keys per split (short
    # contexts use fewer splits instead of many tiny ones), a whole number of key blocks.
    split_len = tl.maximum(tl.cdiv(seq_len, NUM_SPLITS), MIN_SPLIT_LEN)
    split_len = tl.cdiv(split_len, BLOCK_N) * BLOCK_N
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)

    q = tl.load(q_ptr + b * stride_qt + heads[:, None] * stride_qh + offs_d[None, :],
                mask=mask_h[:, None] & mask_d[None, :], other=0.0)

    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    for n in range(start, end, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < end
        # int64 before scaling by the slot stride: slot * Hk * D overflows int32 in large pools
        slots = tl.load(req_to_token_ptr + row * stride_table + offs_n, mask=mask_n,
                        other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_cache_ptr + slots[:, None] * stride_ks + kv_head * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        qk = tl.where(mask_n[None, :], qk, float("-inf"))
        # every iteration has >= 1 valid key, so m_new is finite and the rescale below is safe
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        p = tl.exp2(qk - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        v = tl.load(v_cache_ptr + slots[:, None] * stride_vs + kv_head * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(q.dtype), v.to(q.dtype),
                                            input_precision=DOT_PRECISION)
        l_i = l_i * alpha + tl.sum(p, 1)
        m_i = m_new

    # An empty range (split past the end, or a seq_len-0 padding row) stores zeros and -inf, so
    # stage 2 weighs it 0; the workspace is reused across steps, so it must always be written.
    nonempty = l_i > 0
    l_safe = tl.where(nonempty, l_i, 1.0)
    lse = tl.where(nonempty, m_i + tl.log2(l_safe), float("-inf"))
    tl.store(part_out_ptr + b * stride_pob + heads[:, None] * stride_poh + split * stride_pos
             + offs_d[None, :], (acc / l_safe[:, None]).to(part_out_ptr.dtype.element_ty),
             mask=mask_h[:, None] & mask_d[None, :])
    if NUM_SPLITS > 1:
        tl.store(part_lse_ptr + b * stride_plb + heads * stride_plh + split, lse, mask=mask_h)


@triton.jit
def _decode_reduce_kernel(
    part_out_ptr, part_lse_ptr, out_ptr,
    stride_pob, stride_poh, stride_pos,
    stride_plb, stride_plh,
    stride_ot, stride_oh,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """out[b, h] = sum_s w_s * part_out[b, h, s] / sum_s w_s with w_s = 2^(lse_s - max lse).

    A row whose splits are all empty (seq_len 0 padding) gets zeros, never NaN.
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < NUM_SPLITS
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    lse = tl.load(part_lse_ptr + b * stride_plb + h * stride_plh + offs_s, mask=mask_s,
                  other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp2(lse - m)
    part = tl.load(part_out_ptr + b * stride_pob + h * stride_poh + offs_s[:, None] * stride_pos
                   + offs_d[None, :], mask=mask_s[:, None] & mask_d[None, :], other=0.0)
    num = tl.sum(w[:, None] * part, 0)
    den = tl.sum(w, 0)
    den = tl.where(den > 0, den, 1.0)
    tl.store(out_ptr + b * stride_ot + h * stride_oh + offs_d,
             (num / den).to(out_ptr.dtype.element_ty), mask=mask_d)


def decode_head_block(group: int) -> int:
    """Query heads per stage-1 program: the GQA group, padded to tl.dot's minimum of 16 rows and
    capped at 64 (larger groups take several programs per KV head)."""
    return min(64, max(16, triton.next_power_of_2(group)))


def decode_workspace_shape(batch_size: int, num_heads: int, num_splits: int,
                           head_dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the fp32 workspace (part_out, part_lse) for num_splits > 1."""
    return (batch_size, num_heads, num_splits, head_dim), (batch_size, num_heads, num_splits)


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
    scaling: float, part_out: torch.Tensor | None = None, part_lse: torch.Tensor | None = None,
    min_split_len: int = 128, block_n: int | None = None,
) -> None:
    """Decode attention, one query token per request; no host synchronisation.

    q [B, Hq, D]; k_cache/v_cache [slots, Hk, D]; out [B, Hq, D] (written);
    req_to_token [rows, max_ctx] int32; req_pool_indices [B] int64; seq_lens [B] int32 (keys per
    request, the new token included; 0 is allowed and yields zeros).
    part_out [B, Hq, S, D] and part_lse [B, Hq, S] (fp32, see `decode_workspace_shape`) are the
    split-K workspace, S = number of splits, a launch constant; leave both None for one split.
    `min_split_len` is the fewest keys a split takes before a request uses fewer splits.
    The last dimension of every tensor must be contiguous.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    assert (part_out is None) == (part_lse is None), "pass both workspace tensors or neither"
    for t in (q, k_cache, v_cache, out, req_to_token):
        assert t.stride(-1) == 1, "the last dimension must be contiguous"
    if part_out is None or part_lse is None:
        num_splits = 1
        # one split: stage 1 normalises and writes the output itself (split stride unused)
        part_out, part_lse = out, out
        part_strides = (out.stride(0), out.stride(1), 0)
        lse_strides = (0, 0)
    else:
        num_splits = part_lse.shape[2]
        assert part_out.shape == (batch, num_heads, num_splits, head_dim), part_out.shape
        assert part_lse.shape == (batch, num_heads, num_splits), part_lse.shape
        assert part_out.dtype == part_lse.dtype == torch.float32
        assert part_out.stride(-1) == 1 and part_lse.stride(-1) == 1
        part_strides = (part_out.stride(0), part_out.stride(1), part_out.stride(2))
        lse_strides = (part_lse.stride(0), part_lse.stride(1))
    if batch == 0:
        return
    group = num_heads // num_kv_heads
    block_h = decode_head_block(group)
    head_blocks = triton.cdiv(group, block_h)
    block_d = triton.next_power_of_2(head_dim)
    if block_n is None:
        block_n = 64 if head_dim <= 128 else 32
    precision = "ieee" if q.dtype == torch.float32 else "tf32"

    _decode_partial_kernel[(batch, num_kv_heads * head_blocks, num_splits)](
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens, part_out, part_lse,
        scaling * _LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        req_to_token.stride(0), *part_strides, *lse_strides,
        GROUP=group, HEAD_BLOCKS=head_blocks, NUM_SPLITS=num_splits,
        MIN_SPLIT_LEN=min_split_len, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=block_h,
        BLOCK_N=block_n, DOT_PRECISION=precision, num_warps=4, num_stages=2,
    )
    if num_splits == 1:
        return
    _decode_reduce_kernel[(batch, num_heads)](
        part_out, part_lse, out, *part_strides, *lse_strides,
        out.stride(0), out.stride(1),
        NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits), HEAD_DIM=head_dim,
        BLOCK_D=block_d, num_warps=4 if head_dim >= 128 else 2,
    )
