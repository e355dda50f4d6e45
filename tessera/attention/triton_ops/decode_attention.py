"""Batched decode attention over the token-granular KV cache: one launch per layer.

Each request has one query token attending to its `seq_len` cached keys, which sit at arbitrary
slots listed in `req_to_token[req_pool_indices[b], :seq_len]`. The last of them (position
seq_len - 1) is the new token itself.

One kernel (`_decode_kernel`), grid (batch, kv_heads * head_blocks, num_splits), does what used to
be three launches (store the new K/V, split-K partial attention, merge of the splits):

* GQA: one program takes the query heads that share one KV head, so every K/V row is loaded once
  for the whole group and the scores are a [heads, keys] matmul on the tensor cores.
* Split-K: a program covers one key range (split) of its request. The number of splits is a
  launch constant chosen from the batch size alone (graph-safe); how many of them a request
  actually uses is derived on the device from `seq_lens` (at least `MIN_SPLIT_LEN` keys each), and
  the unused ones do no work. A request that fits one split writes its output directly.
* New token: when `k_new`/`v_new`/`new_loc` are given, the program whose range holds position
  seq_len - 1 takes that key and value from `k_new`/`v_new` (registers) instead of the cache, and
  (for head block 0) stores them at `new_loc[b]`. No other program reads that slot, so the store
  and the reads of one launch never race. Without them every key is read from the cache (the
  caller stored the new K/V beforehand).
* Merge: with several splits, each writes its partial result (normalised output and base-2
  log-sum-exp) to the fp32 workspace, then counts itself in on a per-(request, head program)
  counter with an acq_rel atomic; the program that arrives last merges all partials (one
  [splits, D] tile per head) and writes the output, then resets the counter to 0 for the next
  launch. So short contexts pay for one launch and a long context still spreads over many
  programs.
* Rotary (optional: `positions` + `cos_sin_cache`): q and the new K arrive un-rotated and the
  kernel rotates them (NeoX layout, the native op's rounding) right after loading them, so a
  decode layer needs no separate rotary launch. Only the new token's K is rotated here: the
  cached keys were rotated when they were stored.
* The key loop sits at the kernel's top level (unused splits get an empty range, not an `if`),
  where Triton software-pipelines its loads as in the two-kernel version.
* With PDL (tessera.ops.triton.pdl), a program reads before its `griddepcontrol.wait` only what
  no kernel of the same forward writes: seq_lens, req_pool_indices, positions and the cos/sin
  cache (callers write them with ordinary launches before the forward). Prefetching the first
  K/V tile there too was tried (H200, session 4): no gain at bs=1 and, holding two tiles in
  registers across the wait, slower decode at bs=128 (llama3-8b 6.65 -> 6.92 ms/step).

Why this works inside a CUDA graph: nothing about lengths is known to, or synchronised with, the
host; the workspace and the counters are persistent buffers (the counters always return to 0).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.attention.triton_ops.extend_attention import attend_tile
from tessera.ops.triton.pdl import launch_options, use_pdl

# log2(e): the kernels work in base 2 (exp2/log2 are the native instructions)
_LOG2E = 1.4426950408889634


@triton.jit
def _rope(x, x_partner, cos, sin, sign, dtype):
    """NeoX rotary of rows x ([rows, D] float32; x_partner: x with its halves swapped) rounded as
    the native op rounds: each product in the activation dtype, then their sum
    (tessera.ops.triton.rotary.rope_store)."""
    return ((x * cos).to(dtype).to(tl.float32)
            + (sign * x_partner * sin).to(dtype).to(tl.float32)).to(dtype)


@triton.jit
def _decode_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, req_to_token_ptr, req_pool_indices_ptr, seq_lens_ptr,
    k_new_ptr, v_new_ptr, new_loc_ptr, num_new,
    out_ptr, part_out_ptr, part_lse_ptr, counter_ptr,
    pos_ptr, cos_sin_ptr,
    qk_scale,  # softmax scale * log2(e)
    stride_qt, stride_qh,
    stride_ks, stride_kh, stride_vs, stride_vh,
    stride_knt, stride_knh, stride_vnt, stride_vnh,
    stride_table,
    stride_ot, stride_oh,
    stride_pob, stride_poh, stride_pos,
    stride_plb, stride_plh,
    stride_cs,
    GROUP: tl.constexpr, HEAD_BLOCKS: tl.constexpr, NUM_SPLITS: tl.constexpr,
    MIN_SPLIT_LEN: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_H: tl.constexpr, HEADS_PER_PROGRAM: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_S: tl.constexpr, DOT_PRECISION: tl.constexpr, HAS_NEW: tl.constexpr,
    ROPE: tl.constexpr, PDL: tl.constexpr,
):
    b = tl.program_id(0)
    pid_h = tl.program_id(1)
    kv_head = pid_h // HEAD_BLOCKS
    head_block = pid_h % HEAD_BLOCKS
    split = tl.program_id(2)

    offs_g = head_block * BLOCK_H + tl.arange(0, BLOCK_H)  # index within the GQA group
    mask_h = offs_g < GROUP
    heads = kv_head * GROUP + offs_g
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    # Up to the PDL wait, only what no kernel of this forward writes: the batch metadata and the
    # cos/sin cache (see the module docstring).
    seq_len = tl.load(seq_lens_ptr + b)
    # Split length from the device-side seq_len: at least MIN_SPLIT_LEN keys per split (short
    # contexts use fewer splits instead of many tiny ones), a whole number of key blocks.
    split_len = tl.maximum(tl.cdiv(seq_len, NUM_SPLITS), MIN_SPLIT_LEN)
    split_len = tl.cdiv(split_len, BLOCK_N) * BLOCK_N
    num_active = tl.maximum(tl.cdiv(seq_len, split_len), 1)  # split 0 also serves seq_len 0
    active = split < num_active
    row = tl.load(req_pool_indices_ptr + b).to(tl.int64)
    table_row = req_to_token_ptr + row * stride_table
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)  # <= start for an unused split: no keys
    cache_end = end
    if HAS_NEW:
        # this program's range ends at the request's last key, the new token
        holds_new = active & (b < num_new) & (end == seq_len) & (seq_len > 0)
        cache_end = tl.where(holds_new, end - 1, end)
    if ROPE:
        half_d = HEAD_DIM // 2
        pos = tl.load(pos_ptr + b).to(tl.int64)
        lower = offs_d < half_d
        partner = tl.where(lower, offs_d + half_d, offs_d - half_d)
        freq = tl.where(lower, offs_d, offs_d - half_d)
        # cos/sin rounded to the activation dtype first, as the native op casts them
        dtype = q_ptr.dtype.element_ty
        cos = tl.load(cos_sin_ptr + pos * stride_cs + freq, mask=mask_d, other=0.0)
        sin = tl.load(cos_sin_ptr + pos * stride_cs + half_d + freq, mask=mask_d, other=0.0)
        cos = cos.to(dtype).to(tl.float32)
        sin = sin.to(dtype).to(tl.float32)
        sign = tl.where(lower, -1.0, 1.0)

    if PDL:  # see tessera.ops.triton.pdl; the dependents are released after the key loop
        tl.extra.cuda.gdc_wait()
    q_ptrs = q_ptr + b * stride_qt + heads[:, None] * stride_qh
    q_mask = mask_h[:, None] & mask_d[None, :] & active
    q = tl.load(q_ptrs + offs_d[None, :], mask=q_mask, other=0.0)
    if HAS_NEW:
        # the new token's K/V (read by the program holding it), loaded with q
        new_mask = mask_d & holds_new
        kn = tl.load(k_new_ptr + b * stride_knt + kv_head * stride_knh + offs_d, mask=new_mask,
                     other=0.0)
        vn = tl.load(v_new_ptr + b * stride_vnt + kv_head * stride_vnh + offs_d, mask=new_mask,
                     other=0.0)
        if ROPE:
            kn_partner = tl.load(k_new_ptr + b * stride_knt + kv_head * stride_knh + partner,
                                 mask=new_mask, other=0.0)
            kn = _rope(kn.to(tl.float32), kn_partner.to(tl.float32), cos, sin, sign, dtype)
        # rounded to the cache dtype first: attention sees what the cache will hold
        kn = kn.to(k_cache_ptr.dtype.element_ty)
        vn = vn.to(v_cache_ptr.dtype.element_ty)
    if ROPE:
        q_partner = tl.load(q_ptrs + partner[None, :], mask=q_mask, other=0.0)
        q = _rope(q.to(tl.float32), q_partner.to(tl.float32), cos[None, :], sin[None, :],
                  sign[None, :], dtype)
    m_i = tl.full([BLOCK_H], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
    acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
    # the cached keys [start, cache_end), every tile with >= 1 valid key; the loop stays at the
    # kernel's top level (not under an `if`, where Triton did not pipeline its loads)
    acc, l_i, m_i = attend_tile(
        q, acc, l_i, m_i, 0, k_cache_ptr, v_cache_ptr, table_row, kv_head, start, cache_end,
        qk_scale, stride_ks, stride_kh, stride_vs, stride_vh, offs_d, mask_d,
        CAUSAL=False, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)
    if HAS_NEW:  # noqa: SIM102  (a constexpr if cannot merge with a run-time one)
        if holds_new:
            if head_block == 0:
                slot = tl.load(new_loc_ptr + b).to(tl.int64)
                tl.store(k_cache_ptr + slot * stride_ks + kv_head * stride_kh + offs_d, kn,
                         mask=mask_d)
                tl.store(v_cache_ptr + slot * stride_vs + kv_head * stride_vh + offs_d, vn,
                         mask=mask_d)
            qk_new = tl.sum(q.to(tl.float32) * kn.to(q.dtype).to(tl.float32)[None, :],
                            1) * qk_scale
            m_new = tl.maximum(m_i, qk_new)
            p_new = tl.exp2(qk_new - m_new)
            alpha = tl.exp2(m_i - m_new)
            acc = acc * alpha[:, None] + p_new[:, None] * vn.to(q.dtype).to(tl.float32)[None, :]
            l_i = l_i * alpha + p_new
            m_i = m_new

    if PDL:
        # only now may the next kernel (the o_proj GEMV) start and prefetch its weights: with
        # the release at the start, PDL made llama3-8b bs=1 ctx 4096 slower (H200, +4.5 us a
        # layer), presumably its programs competing with this loop
        tl.extra.cuda.gdc_launch_dependents()
    # an empty range only happens for seq_len 0 (padding): its output is zeros
    l_safe = tl.where(l_i > 0, l_i, 1.0)
    o = acc / l_safe[:, None]
    mask_o = mask_h[:, None] & mask_d[None, :]
    if NUM_SPLITS == 1:
        tl.store(out_ptr + b * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                 o.to(out_ptr.dtype.element_ty), mask=mask_o)
    else:
        if num_active == 1:
            tl.store(out_ptr + b * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                     o.to(out_ptr.dtype.element_ty), mask=mask_o & active)
        elif active:
            lse = m_i + tl.log2(l_safe)  # finite: an active split has >= 1 key
            tl.store(part_out_ptr + b * stride_pob + heads[:, None] * stride_poh
                     + split * stride_pos + offs_d[None, :], o, mask=mask_o)
            tl.store(part_lse_ptr + b * stride_plb + heads * stride_plh + split, lse, mask=mask_h)
            # every thread's stores happen before this program's release of the counter; the
            # last program to arrive acquires them all (L2 loads below: never a stale L1 line)
            tl.debug_barrier()
            counter = counter_ptr + b * tl.num_programs(1) + pid_h
            arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")
            if arrived == num_active - 1:
                # merge head by head, all splits of a head in one [BLOCK_S, D] tile, into a
                # register tile stored once at the end: with no store between the heads' loads
                # (the compiler cannot prove out and the workspace apart) they can all be in
                # flight together
                offs_s = tl.arange(0, BLOCK_S)
                mask_s = offs_s < num_active
                rows = tl.arange(0, BLOCK_H)
                merged = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
                for i in tl.static_range(HEADS_PER_PROGRAM):
                    g = head_block * BLOCK_H + i
                    valid = g < GROUP
                    h = kv_head * GROUP + g
                    lse_s = tl.load(part_lse_ptr + b * stride_plb + h * stride_plh + offs_s,
                                    mask=mask_s & valid, other=float("-inf"),
                                    cache_modifier=".cg")
                    m_s = tl.max(lse_s, 0)
                    w = tl.exp2(lse_s - tl.where(valid, m_s, 0.0))
                    part = tl.load(part_out_ptr + b * stride_pob + h * stride_poh
                                   + offs_s[:, None] * stride_pos + offs_d[None, :],
                                   mask=(mask_s & valid)[:, None] & mask_d[None, :], other=0.0,
                                   cache_modifier=".cg")
                    head = tl.sum(w[:, None] * part, 0) / tl.maximum(tl.sum(w, 0), 1e-30)
                    merged = tl.where((rows == i)[:, None], head[None, :], merged)
                tl.store(out_ptr + b * stride_ot + heads[:, None] * stride_oh + offs_d[None, :],
                         merged.to(out_ptr.dtype.element_ty), mask=mask_o)
                tl.atomic_xchg(counter, 0)  # ready for the next launch (graph replay)


def decode_head_block(group: int) -> int:
    """Query heads per program: the GQA group, padded to tl.dot's minimum of 16 rows and capped
    at 64 (larger groups take several programs per KV head)."""
    return min(64, max(16, triton.next_power_of_2(group)))


def decode_head_programs(num_heads: int, num_kv_heads: int) -> int:
    """Programs per (request, split): KV heads x head blocks (grid axis 1)."""
    group = num_heads // num_kv_heads
    return num_kv_heads * triton.cdiv(group, decode_head_block(group))


def decode_workspace_shape(batch_size: int, num_heads: int, num_splits: int,
                           head_dim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of the fp32 workspace (part_out, part_lse) for num_splits > 1."""
    return (batch_size, num_heads, num_splits, head_dim), (batch_size, num_heads, num_splits)


def decode_counters_shape(batch_size: int, num_heads: int,
                          num_kv_heads: int) -> tuple[int, int]:
    """Shape of the int32 arrival counters for num_splits > 1; they must start at 0 (the kernel
    leaves them at 0 after every launch)."""
    return batch_size, decode_head_programs(num_heads, num_kv_heads)


def decode_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
    scaling: float, part_out: torch.Tensor | None = None, part_lse: torch.Tensor | None = None,
    min_split_len: int = 128, block_n: int | None = None, *,
    counters: torch.Tensor | None = None, k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None, new_loc: torch.Tensor | None = None,
    positions: torch.Tensor | None = None, cos_sin_cache: torch.Tensor | None = None,
) -> None:
    """Decode attention, one query token per request, in one launch; no host synchronisation.

    q [B, Hq, D]; k_cache/v_cache [slots, Hk, D]; out [B, Hq, D] (written);
    req_to_token [rows, max_ctx] int32; req_pool_indices [B] int64; seq_lens [B] int32 (keys per
    request, the new token included; 0 is allowed and yields zeros).
    part_out [B, Hq, S, D], part_lse [B, Hq, S] (fp32, see `decode_workspace_shape`) and counters
    (int32 zeros, `decode_counters_shape`) are the split-K workspace, S = number of splits, a
    launch constant; leave all three None for one split.
    k_new/v_new [N, Hk, D] (any token/head strides) and new_loc [N], N <= B: the new tokens' K/V
    and their slots; the kernel stores them and attends to them from registers. Rows b >= N (or
    all rows, when these are None) read every key, the new one included, from the cache.
    positions [B] and cos_sin_cache [max_position, D] (float32, cos | sin halves, as
    tessera.ops.rotary keeps it): q and k_new arrive un-rotated and the kernel applies the NeoX
    rotary embedding at `positions` itself (rounding as the native op); needs k_new for all B rows.
    `min_split_len` is the fewest keys a split takes before a request uses fewer splits.
    The last dimension of every tensor must be contiguous.
    """
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[1]
    assert num_heads % num_kv_heads == 0, (num_heads, num_kv_heads)
    assert (part_out is None) == (part_lse is None) == (counters is None), \
        "pass all three workspace tensors or none"
    has_new = k_new is not None
    assert has_new == (v_new is not None) == (new_loc is not None), \
        "pass k_new, v_new and new_loc together"
    for t in (q, k_cache, v_cache, out, req_to_token):
        assert t.stride(-1) == 1, "the last dimension must be contiguous"
    if part_out is None or part_lse is None or counters is None:
        num_splits = 1
        part_out, part_lse, counters = out, out, seq_lens  # unused with one split
        part_strides = (0, 0, 0)
        lse_strides = (0, 0)
    else:
        num_splits = part_lse.shape[2]
        assert part_out.shape == (batch, num_heads, num_splits, head_dim), part_out.shape
        assert part_lse.shape == (batch, num_heads, num_splits), part_lse.shape
        assert part_out.dtype == part_lse.dtype == torch.float32
        assert part_out.stride(-1) == 1 and part_lse.stride(-1) == 1
        assert counters.dtype == torch.int32 and counters.is_contiguous()
        assert counters.shape == decode_counters_shape(batch, num_heads, num_kv_heads), \
            counters.shape
        part_strides = (part_out.stride(0), part_out.stride(1), part_out.stride(2))
        lse_strides = (part_lse.stride(0), part_lse.stride(1))
    if has_new:
        assert k_new.shape[1:] == (num_kv_heads, head_dim) and v_new.shape == k_new.shape
        assert new_loc.shape[0] == k_new.shape[0] <= batch, (new_loc.shape, k_new.shape, batch)
        assert k_new.stride(-1) == 1 and v_new.stride(-1) == 1
        num_new = k_new.shape[0]
        new_strides = (k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1))
    else:
        k_new, v_new, new_loc, num_new = k_cache, v_cache, seq_lens, 0  # unused
        new_strides = (0, 0, 0, 0)
    rope = positions is not None
    assert rope == (cos_sin_cache is not None), "pass positions and cos_sin_cache together"
    if rope:
        assert num_new == batch, "the rotary embedding needs every row's new K (k_new)"
        assert positions.shape == (batch,) and cos_sin_cache.shape[1] == head_dim
        assert cos_sin_cache.stride(-1) == 1 and head_dim % 2 == 0
        cs_stride = cos_sin_cache.stride(0)
    else:
        positions, cos_sin_cache, cs_stride = seq_lens, q, 0  # unused
    if batch == 0:
        return
    group = num_heads // num_kv_heads
    block_h = decode_head_block(group)
    head_blocks = triton.cdiv(group, block_h)
    block_d = triton.next_power_of_2(head_dim)
    if block_n is None:
        block_n = 64 if head_dim <= 128 else 32
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    pdl = use_pdl(q.device)

    _decode_kernel[(batch, num_kv_heads * head_blocks, num_splits)](
        q, k_cache, v_cache, req_to_token, req_pool_indices, seq_lens,
        k_new, v_new, new_loc, num_new,
        out, part_out, part_lse, counters,
        positions, cos_sin_cache,
        scaling * _LOG2E,
        q.stride(0), q.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        *new_strides,
        req_to_token.stride(0),
        out.stride(0), out.stride(1),
        *part_strides, *lse_strides,
        cs_stride,
        GROUP=group, HEAD_BLOCKS=head_blocks, NUM_SPLITS=num_splits,
        MIN_SPLIT_LEN=min_split_len, HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_H=block_h,
        HEADS_PER_PROGRAM=min(group, block_h), BLOCK_N=block_n, BLOCK_S=triton.next_power_of_2(num_splits), DOT_PRECISION=precision,
        HAS_NEW=has_new, ROPE=rope, PDL=pdl, num_warps=4, num_stages=2, **launch_options(pdl),
    )
