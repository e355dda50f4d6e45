"""MLA decode attention in the absorbed form: split-K over the latent cache, grouped heads.

One query token per request; its H query heads attend to the request's `seq_len` latent rows,
listed in `req_to_token[req_pool_indices[b], :seq_len]`, the last of them (position seq_len - 1)
the new token's:

    out[b, h] = softmax_j(scaling * q[b, h] · latent_j) · latent_j[:L]

with q[b, h] = [q_nope·W_UK (L dims) | rotated q_pe (R dims)] and latent_j = [c_kv (L) | k_pe (R)]
(see tessera.attention.triton_ops.mla_extend for why this is MLA). Shaped for that:

* Grouped heads: all heads share one KV row, so a program takes BLOCK_H query heads (16: tl.dot's
  smallest M; DeepSeek-V2-Lite's 16 heads are one block, 128 heads eight) and loads each latent
  tile once for all of them; the scores are a [heads, keys] matmul over the L dims plus one over
  the R dims, the output a [heads, L] matmul with the same tile. The latent is read once per
  head block, never per head.
* Split-K (flash decoding): at small batch sizes one program per (request, head block) would
  leave most of the GPU idle while it walks thousands of keys, so each request's keys are cut
  into NUM_SPLITS ranges, a launch constant chosen from the batch size alone (graph-safe). How
  many of them a request really uses is derived on the device from seq_lens (at least
  MIN_SPLIT_LEN keys each, `_split_range`); unused splits do nothing. Each split writes its
  normalised partial output and base-2 log-sum-exp to an fp32 workspace, and a second kernel
  (`_mla_decode_reduce_kernel`) merges them per (request, head). With one split the first
  kernel writes the output directly and the reduce is not launched.
* New token: given `new`/`new_loc` (what the backend does), the programs whose range holds
  position seq_len - 1 take that latent from `new` (registers) instead of the cache, and those
  of head block 0 store it at `new_loc[b]`. No other program reads that slot, so the store and
  the reads of one launch never race, and a decode step needs no separate store launch.

Inside a CUDA graph: nothing about lengths is known to, or synchronised with, the host; the
workspace is a persistent buffer the caller passes (same address in every replay).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.attention.triton_ops.mla_extend import attend_latent

_LOG2E = 1.4426950408889634
# query heads per program: tl.dot's smallest M, and a [16, 512] fp32 accumulator still fits the
# registers (of 8 warps at 512 dims); fewer heads are padded to it
DECODE_HEAD_BLOCK = 16


@triton.jit
def _split_range(seq_len, split, NUM_SPLITS: tl.constexpr, MIN_SPLIT_LEN: tl.constexpr,
                 BLOCK_N: tl.constexpr):
    """(start, end, num_active) of key range `split` of a request with seq_len keys: ranges of
    at least MIN_SPLIT_LEN keys, whole BLOCK_N tiles; end <= start for an unused split. Split 0
    is active even for seq_len 0 (it yields zeros). Both kernels call this, so they agree."""
    split_len = tl.maximum(tl.cdiv(seq_len, NUM_SPLITS), MIN_SPLIT_LEN)
    split_len = tl.cdiv(split_len, BLOCK_N) * BLOCK_N
    num_active = tl.maximum(tl.cdiv(seq_len, split_len), 1)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    return start, end, num_active


@triton.jit
def _mla_decode_kernel(
    q_ptr, cache_ptr, req_to_token_ptr, req_pool_indices_ptr, seq_lens_ptr,
    new_ptr, new_loc_ptr, num_new,
    out_ptr, part_out_ptr, part_lse_ptr,
    qk_scale,  # softmax scale * log2(e)
    stride_qb, stride_qh, stride_cs, stride_table, stride_nt, stride_ob, stride_oh,
    stride_pob, stride_poh, stride_pos, stride_plb, stride_plh,
    NUM_HEADS: tl.constexpr, KV_LORA_RANK: tl.constexpr, ROPE_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, MIN_SPLIT_LEN: tl.constexpr, DOT_PRECISION: tl.constexpr,
    HAS_NEW: tl.constexpr,
):
    """Attention of BLOCK_H heads of request b over its key range `split`: the output itself
    (NUM_SPLITS == 1) or the range's normalised partial output and log-sum-exp. HAS_NEW: rows
    b < num_new take their last key from `new` and store it (see the module docstring)."""
    b = tl.program_id(0)
    head_block = tl.program_id(1)
    split = tl.program_id(2)
    heads = head_block * BLOCK_H + tl.arange(0, BLOCK_H)
    mask_h = heads < NUM_HEADS
    offs_l = tl.arange(0, BLOCK_L)
    mask_l = offs_l < KV_LORA_RANK
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < ROPE_DIM

    seq_len = tl.load(seq_lens_ptr + b)
    start, end, num_active = _split_range(seq_len, split, NUM_SPLITS, MIN_SPLIT_LEN, BLOCK_N)
    active = split < num_active
    cache_end = end
    if HAS_NEW:
        # this program's range ends at the request's last key, the new token
        holds_new = active & (b < num_new) & (end == seq_len) & (seq_len > 0)
        cache_end = tl.where(holds_new, end - 1, end)
    row = tl.load(req_pool_indices_ptr + b).to(tl.int64)
    q_rows = q_ptr + b * stride_qb + heads[:, None] * stride_qh
    q_mask = mask_h[:, None] & active
    q_nope = tl.load(q_rows + offs_l[None, :], mask=q_mask & mask_l[None, :], other=0.0)
    q_pe = tl.load(q_rows + KV_LORA_RANK + offs_r[None, :], mask=q_mask & mask_r[None, :],
                   other=0.0)
    acc = tl.zeros([BLOCK_H, BLOCK_L], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    # an unused split gets an empty range rather than an `if`: the loop stays at the kernel's
    # top level, where Triton pipelines its loads
    acc, l_i, m_i = attend_latent(
        q_nope, q_pe, acc, l_i, m_i, 0, cache_ptr, req_to_token_ptr + row * stride_table,
        start, cache_end, qk_scale, stride_cs, offs_l, mask_l, offs_r, mask_r,
        KV_LORA_RANK=KV_LORA_RANK, CAUSAL=False, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)
    if HAS_NEW:  # noqa: SIM102  (a constexpr if cannot merge with a run-time one)
        if holds_new:
            # loaded after the key loop, not kept in registers across it; rounded to the cache
            # dtype first: attention sees what the cache will hold
            new_row = new_ptr + b * stride_nt
            c_new = tl.load(new_row + offs_l, mask=mask_l, other=0.0)
            c_new = c_new.to(cache_ptr.dtype.element_ty)
            pe_new = tl.load(new_row + KV_LORA_RANK + offs_r, mask=mask_r, other=0.0)
            pe_new = pe_new.to(cache_ptr.dtype.element_ty)
            if head_block == 0:
                slot = tl.load(new_loc_ptr + b).to(tl.int64)
                tl.store(cache_ptr + slot * stride_cs + offs_l, c_new, mask=mask_l)
                tl.store(cache_ptr + slot * stride_cs + KV_LORA_RANK + offs_r, pe_new,
                         mask=mask_r)
            c_f32 = c_new.to(q_nope.dtype).to(tl.float32)
            pe_f32 = pe_new.to(q_pe.dtype).to(tl.float32)
            qk_new = (tl.sum(q_nope.to(tl.float32) * c_f32[None, :], 1)
                      + tl.sum(q_pe.to(tl.float32) * pe_f32[None, :], 1)) * qk_scale
            m_new = tl.maximum(m_i, qk_new)
            p_new = tl.exp2(qk_new - m_new)
            alpha = tl.exp2(m_i - m_new)
            acc = acc * alpha[:, None] + p_new[:, None] * c_f32[None, :]
            l_i = l_i * alpha + p_new
            m_i = m_new
    # an empty range only happens for seq_len 0 (padding): its output is zeros
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    mask_o = mask_h[:, None] & mask_l[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + b * stride_ob + heads[:, None] * stride_oh + offs_l[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=mask_o)
    elif active:
        tl.store(part_out_ptr + b * stride_pob + heads[:, None] * stride_poh + split * stride_pos
                 + offs_l[None, :], o, mask=mask_o)
        # -inf for an empty range (seq_len 0): the reduce gives it weight 0
        tl.store(part_lse_ptr + b * stride_plb + heads * stride_plh + split,
                 m_i + tl.log2(l_safe), mask=mask_h)


@triton.jit
def _mla_decode_reduce_kernel(
    seq_lens_ptr, out_ptr, part_out_ptr, part_lse_ptr,
    stride_ob, stride_oh, stride_pob, stride_poh, stride_pos, stride_plb, stride_plh,
    KV_LORA_RANK: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_N: tl.constexpr,
    NUM_SPLITS: tl.constexpr, BLOCK_S: tl.constexpr, MIN_SPLIT_LEN: tl.constexpr,
):
    """out[b, h] = the active splits' partial outputs weighted by exp2(lse - max lse), all
    splits of the head as one [BLOCK_S, BLOCK_L] tile."""
    b = tl.program_id(0)
    h = tl.program_id(1)
    seq_len = tl.load(seq_lens_ptr + b)
    _, _, num_active = _split_range(seq_len, 0, NUM_SPLITS, MIN_SPLIT_LEN, BLOCK_N)
    offs_s = tl.arange(0, BLOCK_S)
    mask_s = offs_s < num_active
    offs_l = tl.arange(0, BLOCK_L)
    mask_l = offs_l < KV_LORA_RANK
    lse = tl.load(part_lse_ptr + b * stride_plb + h * stride_plh + offs_s, mask=mask_s,
                  other=float("-inf"))
    m = tl.max(lse, 0)
    m = tl.where(m == float("-inf"), 0.0, m)  # seq_len 0: every weight 0, output 0
    w = tl.exp2(lse - m)
    part = tl.load(part_out_ptr + b * stride_pob + h * stride_poh
                   + offs_s[:, None] * stride_pos + offs_l[None, :],
                   mask=mask_s[:, None] & mask_l[None, :], other=0.0)
    o = tl.sum(w[:, None] * part, 0) / tl.maximum(tl.sum(w, 0), 1e-30)
    tl.store(out_ptr + b * stride_ob + h * stride_oh + offs_l, o.to(out_ptr.dtype.element_ty),
             mask=mask_l)


@triton.jit
def _store_latent_kernel(latent_ptr, cache_ptr, loc_ptr, stride_lt, stride_cs,
                         LATENT_DIM: tl.constexpr, BLOCK: tl.constexpr):
    """cache[loc[t]] = latent[t] (cast to the cache dtype) for this program's token t."""
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(loc_ptr + t).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < LATENT_DIM
    row = tl.load(latent_ptr + t * stride_lt + offs, mask=mask)
    tl.store(cache_ptr + slot * stride_cs + offs, row.to(cache_ptr.dtype.element_ty), mask=mask)


def store_latent(latent: torch.Tensor, cache: torch.Tensor, loc: torch.Tensor) -> None:
    """cache[loc] = latent in one launch, reading `latent` [T, 1, D] or [T, D] in place (the
    model's k is a strided view: c_kv and k_pe written into one buffer). cache [slots, D];
    loc [T] integer slots. Padding rows aimed at the dump slot 0 are allowed (the last writer
    wins; slot 0 is never read for a real token). Graph-safe: loc is only read on the device."""
    assert latent.dim() == 2 or latent.shape[1] == 1, latent.shape
    latent = latent[:, 0] if latent.dim() == 3 else latent  # [T, 1, D]: the one shared head
    num_tokens, dim = latent.shape
    assert loc.shape[0] == num_tokens and cache.shape[-1] == dim, (loc.shape, latent.shape,
                                                                   cache.shape)
    assert latent.stride(-1) == 1 and cache.stride(-1) == 1, "contiguous last dimension"
    if num_tokens == 0:
        return
    block = triton.next_power_of_2(dim)
    _store_latent_kernel[(num_tokens,)](latent, cache, loc, latent.stride(0), cache.stride(0),
                                        LATENT_DIM=dim, BLOCK=block,
                                        num_warps=4 if block >= 512 else 1)


def mla_decode_head_programs(num_heads: int) -> int:
    """Programs per (request, split): the heads in blocks of DECODE_HEAD_BLOCK (grid axis 1)."""
    return triton.cdiv(num_heads, DECODE_HEAD_BLOCK)


def mla_decode_workspace_shape(batch_size: int, num_heads: int, num_splits: int,
                               kv_lora_rank: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the fp32 split-K workspace (part_out, part_lse) for num_splits > 1."""
    return (batch_size, num_heads, num_splits, kv_lora_rank), (batch_size, num_heads, num_splits)


def mla_decode_block_n(kv_lora_rank: int) -> int:
    """Keys per tile: 32 at 512 latent dims (two pipelined [32, 576] bf16 tiles in shared
    memory), 64 below."""
    return 32 if kv_lora_rank > 256 else 64


def mla_decode_attention(
    q: torch.Tensor, latent_cache: torch.Tensor, out: torch.Tensor, req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor, seq_lens: torch.Tensor, scaling: float,
    part_out: torch.Tensor | None = None, part_lse: torch.Tensor | None = None,
    min_split_len: int = 64, block_n: int | None = None, *, new: torch.Tensor | None = None,
    new_loc: torch.Tensor | None = None,
) -> None:
    """Absorbed-MLA decode attention, one query token per request; no host synchronisation.

    q [B, H, L + R]; latent_cache [slots, L + R]; out [B, H, L] (written; L = out.shape[-1]); req_to_token [rows, max_ctx] int32;
    req_pool_indices [B] int64; seq_lens [B] int32 (keys per request, the new token included; 0
    is allowed and yields zeros). part_out [B, H, S, L] and part_lse [B, H, S] (fp32,
    `mla_decode_workspace_shape`) are the split-K workspace, S = number of splits, a launch
    constant; leave both None for one split. `min_split_len`: the fewest keys a split takes
    before a request uses fewer splits.
    new [N, 1, L + R] or [N, L + R] (any token stride) and new_loc [N], N <= B: the new tokens'
    latents and their slots; the kernel stores them and attends to them from registers. Rows
    b >= N (or all rows, when these are None) read every key, the new one included, from the
    cache (the caller stored it before). The last dimension of every tensor must be contiguous.
    """
    batch, num_heads, qk_dim = q.shape
    kv_lora_rank = out.shape[-1]
    rope_dim = qk_dim - kv_lora_rank
    assert rope_dim > 0 and latent_cache.shape[-1] == qk_dim, (q.shape, latent_cache.shape,
                                                                out.shape)
    assert out.shape[:2] == (batch, num_heads), (out.shape, q.shape)
    assert (part_out is None) == (part_lse is None), "pass both workspace tensors or neither"
    for t in (q, latent_cache, out, req_to_token):
        assert t.stride(-1) == 1, "the last dimension must be contiguous"
    if part_out is None or part_lse is None:
        num_splits = 1
        part_out, part_lse = out, out  # unused with one split
        part_strides, lse_strides = (0, 0, 0), (0, 0)
    else:
        num_splits = part_lse.shape[2]
        shapes = mla_decode_workspace_shape(batch, num_heads, num_splits, kv_lora_rank)
        assert (tuple(part_out.shape), tuple(part_lse.shape)) == shapes, (part_out.shape,
                                                                          part_lse.shape)
        assert part_out.dtype == part_lse.dtype == torch.float32
        assert part_out.stride(-1) == 1 and part_lse.stride(-1) == 1
        part_strides = (part_out.stride(0), part_out.stride(1), part_out.stride(2))
        lse_strides = (part_lse.stride(0), part_lse.stride(1))
    assert (new is None) == (new_loc is None), "pass new and new_loc together"
    if new is not None and new_loc is not None:
        assert new.dim() == 2 or new.shape[1] == 1, new.shape
        new = new[:, 0] if new.dim() == 3 else new
        assert new.shape[1] == qk_dim and new.stride(-1) == 1, new.shape
        assert new_loc.shape[0] == new.shape[0] <= batch, (new_loc.shape, new.shape, batch)
        num_new, new_stride = new.shape[0], new.stride(0)
    else:
        new, new_loc, num_new, new_stride = latent_cache, seq_lens, 0, 0  # unused
    if batch == 0:
        return
    block_h = DECODE_HEAD_BLOCK
    block_l = max(16, triton.next_power_of_2(kv_lora_rank))
    block_n = block_n or mla_decode_block_n(kv_lora_rank)
    _mla_decode_kernel[(batch, triton.cdiv(num_heads, block_h), num_splits)](
        q, latent_cache, req_to_token, req_pool_indices, seq_lens, new, new_loc, num_new,
        out, part_out, part_lse, scaling * _LOG2E,
        q.stride(0), q.stride(1), latent_cache.stride(0), req_to_token.stride(0), new_stride,
        out.stride(0), out.stride(1), *part_strides, *lse_strides,
        NUM_HEADS=num_heads, KV_LORA_RANK=kv_lora_rank, ROPE_DIM=rope_dim, BLOCK_H=block_h,
        BLOCK_L=block_l, BLOCK_R=max(16, triton.next_power_of_2(rope_dim)), BLOCK_N=block_n,
        NUM_SPLITS=num_splits, MIN_SPLIT_LEN=min_split_len, HAS_NEW=num_new > 0,
        DOT_PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
        # 512 latent dims: 4 warps spill (sm_90 ptxas: 255 registers + ~400 bytes of stack), 8
        # do not (211 registers); (tests) fp32 tiles of 512 dims: one stage fits shared memory
        num_warps=8 if block_l >= 512 else 4, num_stages=1 if q.dtype == torch.float32 else 2,
    )
    if num_splits > 1:
        _mla_decode_reduce_kernel[(batch, num_heads)](
            seq_lens, out, part_out, part_lse, out.stride(0), out.stride(1), *part_strides,
            *lse_strides, KV_LORA_RANK=kv_lora_rank, BLOCK_L=block_l, BLOCK_N=block_n,
            NUM_SPLITS=num_splits, BLOCK_S=triton.next_power_of_2(num_splits),
            MIN_SPLIT_LEN=min_split_len, num_warps=4 if block_l >= 256 else 1,
        )
