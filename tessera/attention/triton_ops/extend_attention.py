"""Extend (prefill) attention on top of a cached prefix, flash-attention style.

Request b has `prefix` keys already in the cache and `extend` new tokens; new token i (position
prefix + i) attends to keys 0..prefix + i. Two ways to get the new tokens' K/V:
  * already stored (store_kv before): every key is read through `req_to_token`, the prefix and
    the new tokens being one contiguous range of positions;
  * passed as k_new/v_new (what the backend does: one launch a layer instead of two): the prefix
    is read through `req_to_token`, the new keys from k_new/v_new, and the same launch stores
    them into the cache (nothing in it reads them back from there).

Grid (q_heads, query_blocks, batch): a program owns BLOCK_M new tokens of one request and one query
head, and walks the key positions in BLOCK_N tiles with an online softmax (running max, running
denominator, fp32 accumulator). The key range splits in two loops:
  * all keys in the cache (the whole prefix with k_new; otherwise every position before the
    tile's first query): visible to every row of the tile, no causal mask;
  * the rest up to the tile's last query (with k_new: every new key, read from k_new/v_new):
    causal mask kpos <= qpos. One causal loop over all new keys rather than an unmasked one and
    a diagonal one: one software pipeline instead of two, faster for short prefills.
Heads are the fastest grid axis so the programs of one GQA group run together and reuse the same
K/V tiles from L2. BLOCK_M is chosen per launch from the longest request (`choose_tile`): 128
rows for long prefills, smaller tiles for short ones (a 16-token prefill of llama3-8b is 32
programs whatever the tile: 16 rows of work each rather than 128).
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from tessera.ops.triton.launch import KernelLauncher, metadata_variant
from tessera.ops.triton.pdl import launch_options, use_pdl
from tessera.platforms import platform_of

_LOG2E = 1.4426950408889634


@triton.jit
def softmax_update(q, k, v, visible, acc, l_i, m_i, qk_scale, DOT_PRECISION: tl.constexpr):
    """One online-softmax step: (acc, l_i, m_i) updated with one tile of keys k / values v
    ([BLOCK_N, D]) of which `visible` ([rows, BLOCK_N]) says what each query row sees.

    The first tile any row sees must hold a visible key for that row (callers guarantee it), so
    m_new is finite from the first update on and exp2(-inf - m_new) = 0 is safe."""
    qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
    qk = tl.where(visible, qk, float("-inf"))
    return softmax_step(qk, q.dtype, v, acc, l_i, m_i, DOT_PRECISION)


@triton.jit
def softmax_step(qk, dtype, v, acc, l_i, m_i, DOT_PRECISION: tl.constexpr):
    """The online-softmax step after the scores: qk ([rows, BLOCK_N], scaled to base 2, -inf
    where a key is not seen) folded into (acc, l_i, m_i) with the values v, P@V in `dtype`."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    acc = acc * alpha[:, None] + tl.dot(p.to(dtype), v.to(dtype), input_precision=DOT_PRECISION)
    l_i = l_i * alpha + tl.sum(p, 1)
    return acc, l_i, m_new


@triton.jit
def attend_tile(
    q, acc, l_i, m_i, qpos, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head, key_start, key_end,
    qk_scale, stride_ks, stride_kh, stride_vs, stride_vh, offs_d, mask_d,
    CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FROM_TABLE: tl.constexpr = True, row_offset=0, cache_ptr=None,
):
    """Online-softmax update of (acc, l_i, m_i) with the keys at positions [key_start, key_end).

    FROM_TABLE: key position n is row table_row_ptr[n] of the cache (k_cache_ptr, v_cache_ptr).
    Otherwise the keys are the batch's new K/V tensors themselves: position n is their row
    n + row_offset, rounded to the cache's dtype (`cache_ptr`) as the cache will hold it.
    The first tile any row sees always holds a visible key (the non-causal loop only runs on keys
    every row sees; a causal loop starts at or before the tile's first query position, at a key
    every row of the tile sees).
    """
    for n in range(key_start, key_end, BLOCK_N):
        offs_n = n + tl.arange(0, BLOCK_N)
        mask_n = offs_n < key_end
        if FROM_TABLE:
            slots = tl.load(table_row_ptr + offs_n, mask=mask_n, other=0).to(tl.int64)
        else:
            slots = (offs_n + row_offset).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(k_cache_ptr + slots[:, None] * stride_ks + kv_head * stride_kh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_cache_ptr + slots[:, None] * stride_vs + kv_head * stride_vh
                    + offs_d[None, :], mask=kv_mask, other=0.0)
        if not FROM_TABLE:
            k = k.to(cache_ptr.dtype.element_ty)
            v = v.to(cache_ptr.dtype.element_ty)
        if CAUSAL:
            visible = mask_n[None, :] & (offs_n[None, :] <= qpos[:, None])
        else:
            visible = mask_n[None, :]
        acc, l_i, m_i = softmax_update(q, k, v, visible, acc, l_i, m_i, qk_scale, DOT_PRECISION)
    return acc, l_i, m_i


@triton.jit
def attend_new_tma(q, acc, l_i, m_i, qpos, k_desc, v_desc, kv_head, key_start, key_end,
                   row_offset, qk_scale, cache_ptr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
                   HEAD_DIM: tl.constexpr, DOT_PRECISION: tl.constexpr):
    """attend_tile over the batch's new keys [key_start, key_end) (position n is row
    n + row_offset of k_new/v_new), each tile fetched by the TMA engine through a descriptor of
    [tokens, kv_heads * HEAD_DIM]. CAUSAL=False: every key of the range is visible to every row
    (keys before the tile's first query), no mask at all: the scores go straight to
    softmax_step (softmax_update with an all-true mask compiles to different sm_90 code than the
    form measured and tested on the H200)."""
    for n in range(key_start, key_end, BLOCK_N):
        row = (n + row_offset).to(tl.int32)
        k = k_desc.load([row, kv_head * HEAD_DIM]).to(cache_ptr.dtype.element_ty)
        v = v_desc.load([row, kv_head * HEAD_DIM]).to(cache_ptr.dtype.element_ty)
        qk = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PRECISION) * qk_scale
        if CAUSAL:
            offs_n = n + tl.arange(0, BLOCK_N)
            visible = (offs_n[None, :] < key_end) & (offs_n[None, :] <= qpos[:, None])
            qk = tl.where(visible, qk, float("-inf"))
        acc, l_i, m_i = softmax_step(qk, q.dtype, v, acc, l_i, m_i, DOT_PRECISION)
    return acc, l_i, m_i


# per-request metadata is read one scalar per program: its alignment buys nothing, and not
# specialising on it spares a compiled variant per alignment pattern of the batch's metadata
@triton.jit(do_not_specialize=["pad_request"],
            do_not_specialize_on_alignment=["req_pool_indices_ptr", "prefix_lens_ptr",
                                            "extend_lens_ptr", "extend_starts_ptr"])
def _extend_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, out_ptr,
    req_to_token_ptr, req_pool_indices_ptr, prefix_lens_ptr, extend_lens_ptr, extend_starts_ptr,
    qk_scale,  # softmax scale * log2(e)
    stride_qt, stride_qh, stride_ks, stride_kh, stride_vs, stride_vh, stride_ot, stride_oh,
    stride_table,
    k_new_ptr, v_new_ptr, new_loc_ptr, stride_knt, stride_knh, stride_vnt, stride_vnh,
    k_desc, v_desc, q_desc, pad_request,
    GROUP: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, DOT_PRECISION: tl.constexpr, NEW_KV: tl.constexpr,
    RECORD_SLOTS: tl.constexpr = False, PDL: tl.constexpr = False, TMA: tl.constexpr = False,
):
    """out[tokens of tile, head] = causal attention of BLOCK_M new tokens of one request.

    NEW_KV: the new tokens' K/V are not in the cache yet. They are read from k_new/v_new (token
    rows, like q), and the first query head of each KV head stores its tile's rows into the cache
    at new_loc: no program of this launch reads them from the cache, so no ordering is needed.
    RECORD_SLOTS (with NEW_KV): the programs of query head 0 also write the new tokens' slots
    into the request's req_to_token row (positions prefix..prefix + extend_len - 1); this launch
    reads that row only below the prefix.
    PDL: launched as a programmatic dependent (tessera.ops.triton.pdl): the programs may become
    resident while the kernel before them (a graph piece's last) finishes, and wait for it before
    reading anything.
    TMA (with NEW_KV): the q tile and the new keys' tiles come through the descriptors q_desc,
    k_desc, v_desc (the TMA engine, not per-thread loads), the keys in two loops: those before
    the tile's first query without any mask, then the diagonal ones under the causal mask; and
    the GROUP programs of a KV head share the store of the tile's new K/V (row r by query head
    r % GROUP) instead of leaving it all to the first (H200, llama3-8b 1024 tokens: 29.0 -> 27.0
    us, 512: 15.9 -> 13.8; benchmarks/results/2026-11-24_h200_s9_extend_tma_store.json).
    pad_request: the index of the request that is the padding of a graph's token count
    (whole-forward extend graphs, tessera.runner.piecewise_graph_runner), else -1: its rows of out
    are zeroed, nothing of it is stored or attended. A runtime value, not a constexpr: no second
    compiled variant of every tile."""
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    head = tl.program_id(0)
    # last query tiles first: under the causal mask they see the most keys, so starting them
    # early shortens the tail of the launch
    m_block = tl.num_programs(1) - 1 - tl.program_id(1)
    b = tl.program_id(2)
    extend_len = tl.load(extend_lens_ptr + b)
    m_start = m_block * BLOCK_M
    if m_start >= extend_len:  # the grid is sized for the longest request
        return
    first_token = tl.load(extend_starts_ptr + b).to(tl.int64)
    if b == pad_request:
        pad_m = m_start + tl.arange(0, BLOCK_M)
        pad_d = tl.arange(0, BLOCK_D)
        tl.store(out_ptr + (first_token + pad_m)[:, None] * stride_ot + head * stride_oh
                 + pad_d[None, :], tl.zeros([BLOCK_M, BLOCK_D], dtype=out_ptr.dtype.element_ty),
                 mask=(pad_m < extend_len)[:, None] & (pad_d < HEAD_DIM)[None, :])
        return
    prefix = tl.load(prefix_lens_ptr + b)
    row = tl.load(req_pool_indices_ptr + b).to(tl.int64)
    kv_head = head // GROUP

    offs_m = m_start + tl.arange(0, BLOCK_M)
    mask_m = offs_m < extend_len
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    tokens = first_token + offs_m
    if TMA:  # rows past the request are another request's or zero: never stored
        q = q_desc.load([(first_token + m_start).to(tl.int32), head * HEAD_DIM])
    else:
        q = tl.load(q_ptr + tokens[:, None] * stride_qt + head * stride_qh + offs_d[None, :],
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    qpos = prefix + offs_m

    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    table_row_ptr = req_to_token_ptr + row * stride_table
    diagonal_end = prefix + tl.minimum(m_start + BLOCK_M, extend_len)
    if NEW_KV:
        kv_rows = mask_m[:, None] & mask_d[None, :]
        if TMA:  # the group's programs share the store: row r by query head r % GROUP
            kv_rows = kv_rows & ((tl.arange(0, BLOCK_M) % GROUP) == (head % GROUP))[:, None]
        if TMA or head % GROUP == 0:  # else one program per (KV head, tile) stores its K/V
            slots = tl.load(new_loc_ptr + tokens, mask=mask_m, other=0).to(tl.int64)
            kn = tl.load(k_new_ptr + tokens[:, None] * stride_knt + kv_head * stride_knh
                         + offs_d[None, :], mask=kv_rows, other=0.0)
            vn = tl.load(v_new_ptr + tokens[:, None] * stride_vnt + kv_head * stride_vnh
                         + offs_d[None, :], mask=kv_rows, other=0.0)
            tl.store(k_cache_ptr + slots[:, None] * stride_ks + kv_head * stride_kh
                     + offs_d[None, :], kn.to(k_cache_ptr.dtype.element_ty), mask=kv_rows)
            tl.store(v_cache_ptr + slots[:, None] * stride_vs + kv_head * stride_vh
                     + offs_d[None, :], vn.to(v_cache_ptr.dtype.element_ty), mask=kv_rows)
            if RECORD_SLOTS:  # noqa: SIM102  (a constexpr test, then a runtime one)
                if head == 0:
                    tl.store(req_to_token_ptr + row * stride_table + prefix + offs_m,
                             slots.to(req_to_token_ptr.dtype.element_ty), mask=mask_m)
        # the cached prefix (no mask), then the new tokens; new token j of the request (position
        # prefix + j) is row first_token + j of k_new/v_new
        new_row = first_token - prefix
        acc, l_i, m_i = attend_tile(
            q, acc, l_i, m_i, qpos, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head, 0, prefix,
            qk_scale, stride_ks, stride_kh, stride_vs, stride_vh, offs_d, mask_d,
            CAUSAL=False, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)
        # every new key up to the tile's diagonal in one causal loop: one software pipeline
        # instead of an unmasked loop and a diagonal one (H200 inside graphs, llama3-8b: 64
        # tokens 5.6 -> 4.5 us, 16 tokens 3.6 -> 3.4, 256 and 1024 within 1-2%:
        # benchmarks/results/2026-11-23_h200_s7_extend_one_new_loop.json)
        if TMA:
            shared_end = prefix + m_start  # new keys before the tile's first query
            acc, l_i, m_i = attend_new_tma(
                q, acc, l_i, m_i, qpos, k_desc, v_desc, kv_head, prefix, shared_end, new_row,
                qk_scale, k_cache_ptr, CAUSAL=False, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM,
                DOT_PRECISION=DOT_PRECISION)
            acc, l_i, m_i = attend_new_tma(
                q, acc, l_i, m_i, qpos, k_desc, v_desc, kv_head, shared_end, diagonal_end,
                new_row, qk_scale, k_cache_ptr, CAUSAL=True, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM,
                DOT_PRECISION=DOT_PRECISION)
        else:
            acc, l_i, m_i = attend_tile(
                q, acc, l_i, m_i, qpos, k_new_ptr, v_new_ptr, table_row_ptr, kv_head, prefix,
                diagonal_end, qk_scale, stride_knt, stride_knh, stride_vnt, stride_vnh, offs_d,
                mask_d, CAUSAL=True, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION,
                FROM_TABLE=False, row_offset=new_row, cache_ptr=k_cache_ptr)
    else:
        shared_end = prefix + m_start  # keys before the tile's first query: seen by all its rows
        acc, l_i, m_i = attend_tile(
            q, acc, l_i, m_i, qpos, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head, 0,
            shared_end, qk_scale, stride_ks, stride_kh, stride_vs, stride_vh, offs_d, mask_d,
            CAUSAL=False, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)
        acc, l_i, m_i = attend_tile(
            q, acc, l_i, m_i, qpos, k_cache_ptr, v_cache_ptr, table_row_ptr, kv_head, shared_end,
            diagonal_end, qk_scale, stride_ks, stride_kh, stride_vs, stride_vh, offs_d, mask_d,
            CAUSAL=True, BLOCK_N=BLOCK_N, DOT_PRECISION=DOT_PRECISION)

    l_safe = tl.where(l_i > 0, l_i, 1.0)  # rows past extend_len are masked out of the store
    tl.store(out_ptr + tokens[:, None] * stride_ot + head * stride_oh + offs_d[None, :],
             (acc / l_safe[:, None]).to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_d[None, :])


def extend_config(head_dim: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for a head size, at the largest query tile;
    sized for H100/H200-class shared memory (the K and V tiles of every pipeline stage plus the Q
    tile must fit)."""
    return extend_tiles(head_dim)[0]


def extend_tiles(head_dim: int) -> list[tuple[int, int, int, int]]:
    """The (BLOCK_M, BLOCK_N, num_warps, num_stages) choices for a head size, largest query tile
    first. d <= 128: from the H200 sweeps inside CUDA graphs
    (benchmarks/results/2026-11-23_h200_s6_extend_key_tiles.json): 16-row tiles want 32-key
    tiles and 2 stages (llama3-8b 16 tokens 4.8 -> 3.6 us); 32 rows (not measured at the
    lengths that pick them) take the 16-row settings. Since the kernel's new keys run in one
    loop (..._s7_extend_key_tiles_one_loop.json) 64-row tiles want 128-key tiles: 256 tokens
    llama3-8b 10.3 -> 9.9 us, qwen3-0.6b 10.2 -> 9.5."""
    if head_dim <= 64:
        return [(128, 64, 4, 3), (64, 64, 4, 3), (32, 64, 4, 3), (16, 64, 4, 3)]
    if head_dim <= 128:
        return [(128, 64, 8, 3), (64, 128, 8, 2), (32, 32, 8, 2), (16, 32, 8, 2)]
    return [(64, 32, 8, 2), (32, 32, 8, 2), (16, 32, 8, 2)]


# The new keys through TMA descriptors (the `TMA` kernel path): from this many new tokens in the
# longest request, with this tile. H200, bf16, one request, no prefix, d 128, in CUDA graphs
# (benchmarks/results/2026-11-24_h200_s9_extend_tma.json): llama3-8b 512 / 1024 / 2048 tokens
# 19.0 -> 15.9, 36.4 -> 29.1, 116.7 -> 87.5 us; qwen3-0.6b 18.5 -> 14.5, 29.7 -> 23.3, 58.9 ->
# 44.6; but at 256 tokens slower (9.4 -> 10.5, 9.3 -> 10.1; the forward: llama3-8b 7.65 -> 7.78
# ms), hence 512. llama3-8b's 1024-token forward, same runner, back to back: 24.69 -> 24.30 ms.
TMA_MIN_TOKENS = 512
TMA_TILE = (64, 64, 4, 3)  # BLOCK_M, BLOCK_N, num_warps, num_stages (BLOCK_M % BLOCK_N == 0)


def tma_possible(device: torch.device, head_dim: int, *tensors: torch.Tensor) -> bool:
    """Whether q and the new keys can be read through TMA descriptors of [tokens, heads *
    head_dim]: a GPU with the TMA engine (compute capability >= 9.0), compiled Triton, a
    power-of-two head size of 16..128, each head's rows right after the previous head's, and a
    16-byte aligned base and token stride."""
    if os.environ.get("TRITON_INTERPRET") == "1" or not platform_of(device).has_tma(device):
        return False
    if head_dim & (head_dim - 1) or not 16 <= head_dim <= 128:  # measured at 128; 256 would
        return False  # not fit TMA_TILE's pipeline in shared memory
    return all(t.stride(1) == head_dim and t.data_ptr() % 16 == 0
               and (t.stride(0) * t.element_size()) % 16 == 0 for t in tensors)


@functools.lru_cache(maxsize=4096)  # a few us saved per launch; bounded, shared by all layers
def choose_tile(head_dim: int, max_extend_len: int) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for one launch: BLOCK_M about a quarter of the
    longest request's new tokens, between 16 and the head size's largest tile. H200, bf16, d 128,
    one request, inside CUDA graphs (benchmarks/results/2026-11-23_h200_s6_extend_blocks.json):
    16 and 64 tokens are fastest with 16-row tiles, 256 with 64, 1024 with 128 (llama3-8b 16
    tokens 7.5 -> 4.7 us, 256 tokens 14.0 -> 10.7 us against the fixed 128-row tile), 8 warps
    throughout; then the key tile and pipeline depth of `extend_tiles`."""
    target = max(16, triton.next_power_of_2(max(max_extend_len, 1)) // 4)
    tiles = extend_tiles(head_dim)
    return next((t for t in tiles if t[0] <= target), tiles[-1])


class ExtendAttention:
    """The extend kernel for fixed q/out/cache/table tensors: one layer's call site.

    Everything about the launch that does not depend on the batch (pointers, strides, tile
    config) is worked out once here; a call passes the batch's metadata. The piecewise graph's
    replay plan keeps one per layer and size (its q/k/v/out are the graph's static buffers), so a
    launch is the compiled kernel's launcher call and nothing else (`KernelLauncher`).
    Arguments: see `extend_attention`.
    """

    def __init__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 out: torch.Tensor, req_to_token: torch.Tensor, scaling: float,
                 k_new: torch.Tensor | None = None, v_new: torch.Tensor | None = None,
                 block_m: int | None = None, block_n: int | None = None,
                 num_warps: int | None = None, num_stages: int | None = None,
                 record_slots: bool = False, tma: bool | None = None) -> None:
        self.num_heads, head_dim = q.shape[1], q.shape[2]
        num_kv_heads = k_cache.shape[1]
        assert self.num_heads % num_kv_heads == 0, (self.num_heads, num_kv_heads)
        self.new_kv = k_new is not None
        assert self.new_kv == (v_new is not None), "k_new and v_new together"
        assert self.new_kv or not record_slots, "recording slots needs k_new/v_new (new_loc)"
        for t in (q, k_cache, v_cache, out, req_to_token, *((k_new, v_new) if self.new_kv else ())):
            assert t.stride(-1) == 1, "the last dimension must be contiguous"
        if not self.new_kv:  # placeholders the kernel never reads (NEW_KV=False)
            k_new = v_new = k_cache
        self.head_dim = head_dim
        # given: that setting for every launch (tests, sweeps); else by the request lengths
        self.fixed = {"BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": num_warps,
                      "num_stages": num_stages}
        self._head = (q, k_cache, v_cache, out, req_to_token)
        self._scale_strides = (
            scaling * _LOG2E, q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1),
            v_cache.stride(0), v_cache.stride(1), out.stride(0), out.stride(1),
            req_to_token.stride(0))
        self._new = (k_new, v_new)
        self._new_strides = (k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1))
        self._base_kwargs = {
            "GROUP": self.num_heads // num_kv_heads, "HEAD_DIM": head_dim,
            "BLOCK_D": triton.next_power_of_2(head_dim),
            "DOT_PRECISION": "ieee" if q.dtype == torch.float32 else "tf32",
            "NEW_KV": self.new_kv, "RECORD_SLOTS": record_slots}
        pdl = use_pdl(q.device)  # decided once per call site, as the launch options must be
        self._base_kwargs.update(PDL=pdl, **launch_options(pdl))
        # the TMA path for long prefills. tma=None: where tma_possible, from TMA_MIN_TOKENS new
        # tokens and only with the automatic tiles (a given block_m asks for that pointer-path
        # tile); True: for every launch (tests); False: never
        self.tma_forced = tma is True
        if tma is None:
            tma = (self.new_kv and block_m is None
                   and tma_possible(q.device, head_dim, q, k_new, v_new))
        assert not tma or self.new_kv, "the TMA path reads the new keys from k_new / v_new"
        self.tma = bool(tma)
        # ((BLOCK_M, BLOCK_N), k, v and q descriptors) of the TMA path, made on first use
        self._descriptors: tuple | None = None
        # (BLOCK_M, TMA) -> the launch kwargs of that tile (a handful per instance)
        self._kwargs_by_tile: dict[tuple[int, bool], dict] = {}
        self.launcher = KernelLauncher(_extend_kernel)

    def tile(self, max_extend_len: int) -> tuple[int, bool, dict]:
        """(BLOCK_M, whether the TMA path runs, the kernel's constexprs and launch options) for a
        launch of this shape."""
        fixed_m = self.fixed["BLOCK_M"]
        tma = self.tma and (self.tma_forced or max_extend_len >= TMA_MIN_TOKENS)
        if tma:
            tile = TMA_TILE if fixed_m is None else (fixed_m, TMA_TILE[1], *TMA_TILE[2:])
        elif fixed_m is None:
            tile = choose_tile(self.head_dim, max_extend_len)
        else:  # the settings of that query tile, unless given too
            tile = next((t for t in extend_tiles(self.head_dim) if t[0] == fixed_m),
                        (fixed_m, 32, 4, 2))
        block_m = tile[0]
        kwargs = self._kwargs_by_tile.get((block_m, tma))
        if kwargs is None:
            kwargs = {**self._base_kwargs, "BLOCK_M": block_m, "BLOCK_N": tile[1],
                      "num_warps": tile[2], "num_stages": tile[3], "TMA": tma}
            kwargs.update({k: v for k, v in self.fixed.items() if v is not None})
            assert not tma or block_m % kwargs["BLOCK_N"] == 0, (
                "the TMA path's unmasked loop needs whole key tiles below the query tile")
            self._kwargs_by_tile[(block_m, tma)] = kwargs
        return block_m, tma, kwargs

    def descriptors(self, block_m: int, block_n: int) -> tuple:
        """TMA descriptors of k_new, v_new ([block_n, head_dim] boxes) and q ([block_m,
        head_dim] boxes), each as [tokens, heads * head_dim] (made once per tile: the call
        site's tensors are fixed)."""
        if self._descriptors is None or self._descriptors[0] != (block_m, block_n):
            from triton.tools.tensor_descriptor import TensorDescriptor

            descs = []
            for t, rows in ((self._new[0], block_n), (self._new[1], block_n),
                            (self._head[0], block_m)):
                descs.append(TensorDescriptor(t, [t.shape[0], t.shape[1] * t.shape[2]],
                                              [t.stride(0), 1], [rows, self.head_dim]))
            self._descriptors = ((block_m, block_n), *descs)
        return self._descriptors[1:]

    def __call__(self, req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor,
                 extend_lens: torch.Tensor, extend_starts: torch.Tensor, max_extend_len: int,
                 new_loc: torch.Tensor | None = None, variant: tuple | None = None,
                 pad_last: bool = False) -> None:
        """`variant`: `metadata_variant(...)` of the metadata tensors, when the caller has it.
        `pad_last`: the last request is padding (its output rows zeroed; see the kernel)."""
        assert self.new_kv == (new_loc is not None), "new_loc goes with k_new/v_new"
        batch = req_pool_indices.shape[0]
        if batch == 0 or max_extend_len == 0:
            return
        if new_loc is None:
            new_loc = req_pool_indices
        if variant is None:
            variant = metadata_variant(req_pool_indices, prefix_lens, extend_lens, extend_starts,
                                       new_loc)
        block_m, tma, kwargs = self.tile(max_extend_len)
        descs = (self.descriptors(block_m, kwargs["BLOCK_N"]) if tma else (None, None, None))
        grid = (self.num_heads, triton.cdiv(max_extend_len, block_m), batch)
        self.launcher((variant, block_m, tma), grid,
                      (*self._head, req_pool_indices, prefix_lens, extend_lens, extend_starts,
                       *self._scale_strides, *self._new, new_loc, *self._new_strides, *descs,
                       batch - 1 if pad_last else -1),
                      kwargs)


def extend_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, out: torch.Tensor,
    req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, prefix_lens: torch.Tensor,
    extend_lens: torch.Tensor, extend_starts: torch.Tensor, max_extend_len: int, scaling: float,
    block_m: int | None = None, block_n: int | None = None, k_new: torch.Tensor | None = None,
    v_new: torch.Tensor | None = None, new_loc: torch.Tensor | None = None,
    record_slots: bool = False, pad_last: bool = False,
) -> None:
    """Causal attention of the new tokens of a batch over their cached prefix and themselves.

    q [T, Hq, D] (T >= the real token count; only rows listed by extend_starts/extend_lens are
    read); k_cache/v_cache [slots, Hk, D] already holding the new tokens' K/V; out [T, Hq, D]
    (only the real rows are written); req_to_token [rows, max_ctx] int32; req_pool_indices [B]
    int64; prefix_lens, extend_lens, extend_starts [B] int32; max_extend_len: host-side max of
    extend_lens (sizes the grid). The last dimension of every tensor must be contiguous.

    With k_new/v_new [T, Hk, D] (any token/head strides) and new_loc [T]: the new tokens' K/V are
    NOT in the cache yet; this one launch stores them at new_loc (the real rows only) and attends
    to them, instead of a store_kv launch before it. With record_slots too, it also writes
    req_to_token[row, prefix + i] = new_loc[token i] for every new token (what
    ModelRunner.record_slots would do in a separate scatter before the forward).
    With pad_last, request B - 1 is padding: its rows of out are zeroed and nothing of it is
    stored, recorded or attended to.
    """
    assert (k_new is not None) == (v_new is not None) == (new_loc is not None), (
        "k_new, v_new, new_loc together")
    launch = ExtendAttention(q, k_cache, v_cache, out, req_to_token, scaling, k_new, v_new,
                             block_m, block_n, record_slots=record_slots)
    launch(req_pool_indices, prefix_lens, extend_lens, extend_starts, max_extend_len, new_loc,
           pad_last=pad_last)
