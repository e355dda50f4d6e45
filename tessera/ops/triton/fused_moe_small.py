"""Fused mixture-of-experts for a few (token, expert) pairs: decode at small batch.

At decode batch sizes the T*K pairs mostly pick distinct experts, so grouping them by expert
(tessera.ops.triton.fused_moe's sort into BLOCK_M-row blocks) buys no weight reuse and costs a
dozen small launches (the sort, counts, scans) on every layer. Here each pair is its own GEMV,
with no sorting: the expert comes straight from topk_ids, and every program streams one
BLOCK_N-row slice of that expert's weights, so a step reads the selected experts' weights once
per pair that chose them and nothing else.

1. `_small_gate_up_kernel`, grid (pairs, I / BLOCK_N): gate and up rows of the pair's expert
   against the token's hidden state, SiLU(gate)·up into act [T*K, I];
2. `_small_down_kernel`, grid (pairs, H / BLOCK_N): the expert's down rows against act, times the
   pair's routing weight, into [T*K, H]; the K rows of a token are summed by the caller.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# pairs (T*K) up to which the per-pair path is used: beyond it pairs start sharing experts and the
# sorted grouped GEMM reads each expert's weights once for all of them
SMALL_BATCH_MAX_PAIRS = 32


@triton.jit
def _small_gate_up_kernel(x_ptr, w_ptr, out_ptr, ids_ptr, N, K, stride_xm, stride_we,
                          stride_wn, stride_om, TOP_K: tl.constexpr, BLOCK_N: tl.constexpr,
                          BLOCK_K: tl.constexpr, TILE_ACC: tl.constexpr):
    pair = tl.program_id(0)
    token = pair // TOP_K
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    # w13[e] is [2N, K] row-major: gate rows [0, N), up rows [N, 2N)
    g_ptrs = w_ptr + expert * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :]
    u_ptrs = g_ptrs + N * stride_wn
    x_ptrs = x_ptr + token * stride_xm + offs_k
    if TILE_ACC:
        tile_g = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        tile_u = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc_g = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        x = tl.load(x_ptrs, mask=k_mask, other=0.0).to(tl.float32)
        w_mask = n_mask[:, None] & k_mask[None, :]
        g = tl.load(g_ptrs, mask=w_mask, other=0.0).to(tl.float32)
        u = tl.load(u_ptrs, mask=w_mask, other=0.0).to(tl.float32)
        if TILE_ACC:
            tile_g += g * x[None, :]
            tile_u += u * x[None, :]
        else:
            acc_g += tl.sum(g * x[None, :], axis=1)
            acc_u += tl.sum(u * x[None, :], axis=1)
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    if TILE_ACC:
        acc_g = tl.sum(tile_g, axis=1)
        acc_u = tl.sum(tile_u, axis=1)
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    tl.store(out_ptr + pair * stride_om + offs_n, act.to(out_ptr.dtype.element_ty), mask=n_mask)


@triton.jit
def _small_down_kernel(a_ptr, w_ptr, out_ptr, weights_ptr, ids_ptr, N, K, stride_am, stride_we,
                       stride_wn, stride_om, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       TILE_ACC: tl.constexpr):
    pair = tl.program_id(0)
    expert = tl.load(ids_ptr + pair).to(tl.int64)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + expert * stride_we + offs_n[:, None] * stride_wn + offs_k[None, :]
    a_ptrs = a_ptr + pair * stride_am + offs_k
    if TILE_ACC:
        tile = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=k_mask, other=0.0).to(tl.float32)
        w = tl.load(w_ptrs, mask=n_mask[:, None] & k_mask[None, :], other=0.0).to(tl.float32)
        if TILE_ACC:
            tile += w * a[None, :]
        else:
            acc += tl.sum(w * a[None, :], axis=1)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if TILE_ACC:
        acc = tl.sum(tile, axis=1)
    acc = acc * tl.load(weights_ptr + pair).to(tl.float32)
    tl.store(out_ptr + pair * stride_om + offs_n, acc.to(out_ptr.dtype.element_ty), mask=n_mask)


def fused_moe_small_batch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                          topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                          block_n: int = 8, block_k: int = 256, num_warps: int = 8,
                          tile_acc: bool = True) -> torch.Tensor:
    """The routed experts' output [T, H] by one GEMV per (token, expert) pair (see the module
    docstring); same contract as tessera.ops.triton.fused_moe.fused_moe.

    tile_acc accumulates a [block_n, block_k] float32 tile and reduces it once at the end (the
    dense GEMV's scheme, tessera.ops.triton.gemv) instead of reducing every K step. The defaults
    are scripts/gpu/moe_small_sweep.py's best at T=1 on an H100 (2026-12-08: qwen3-30b-a3b
    49.7 us = 50% of the copy floor, deepseek-v2-lite 58.8 us = 58%; 81% / 85% at T=4), where
    32-row tiles without tile_acc gave 35% / 43%. Summing a token's down GEMVs in one program
    (one launch and the [T*K, H] buffer fewer) was slower in the same sweep (56.7 / 68.7 us)."""
    num_tokens, hidden = x.shape
    inter = w13.shape[1] // 2
    top_k = topk_ids.shape[1]
    num_pairs = num_tokens * top_k
    x = x if x.stride(-1) == 1 else x.contiguous()
    w13, w2 = w13.contiguous(), w2.contiguous()
    ids = topk_ids.reshape(-1).contiguous()
    weights = topk_weights.reshape(-1).contiguous()  # any float dtype: read as fp32 in-kernel
    act = torch.empty((num_pairs, inter), dtype=x.dtype, device=x.device)
    _small_gate_up_kernel[(num_pairs, triton.cdiv(inter, block_n))](
        x, w13, act, ids, inter, hidden, x.stride(0), w13.stride(0), w13.stride(1),
        act.stride(0), TOP_K=top_k, BLOCK_N=block_n, BLOCK_K=block_k, TILE_ACC=tile_acc,
        num_warps=num_warps)
    down = torch.empty((num_pairs, hidden), dtype=x.dtype, device=x.device)
    _small_down_kernel[(num_pairs, triton.cdiv(hidden, block_n))](
        act, w2, down, weights, ids, hidden, inter, act.stride(0), w2.stride(0), w2.stride(1),
        down.stride(0), BLOCK_N=block_n, BLOCK_K=block_k, TILE_ACC=tile_acc,
        num_warps=num_warps)
    return down.view(num_tokens, top_k, hidden).sum(dim=1)
