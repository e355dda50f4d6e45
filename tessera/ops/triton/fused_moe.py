"""Fused mixture-of-experts: two grouped GEMMs over tokens sorted by expert.

The (token, k) pairs of a routing are sorted by expert into blocks of BLOCK_M rows, each block
one expert's (tessera.ops.moe.moe_align_block_size). Then:

1. `_moe_gate_up_kernel`: per block of rows and BLOCK_N intermediate columns, the gate and up
   projections of that block's expert as two accumulators over the hidden dim, and SiLU(gate)·up
   written to an intermediate [T*K, I] at each pair's row;
2. `_moe_down_kernel`: per block, the expert's down projection of those rows, scaled by the
   pair's routing weight, written to [T*K, H];
3. the K rows of each token summed (torch).

Padding rows of a block (pair index T*K) load zeros and store nothing; blocks past the used
length return at once. Block sizes come from tessera.ops.triton.moe_config. Up to
SMALL_BATCH_MAX_PAIRS pairs (decode at small batch) there is nothing to group and the per-pair
GEMVs of tessera.ops.triton.fused_moe_small run instead (unless a config is passed).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from tessera.ops.moe import moe_align_block_size
from tessera.ops.triton.fused_moe_small import SMALL_BATCH_MAX_PAIRS, fused_moe_small_batch
from tessera.ops.triton.moe_config import MoEKernelConfig, get_moe_config


@triton.jit
def _moe_gate_up_kernel(x_ptr, w_ptr, out_ptr, sorted_ids_ptr, expert_ids_ptr, num_padded_ptr,
                        N, K, num_pairs, stride_xm, stride_we, stride_wn, stride_om,
                        TOP_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_ids_ptr + offs_m).to(tl.int64)
    valid = pairs < num_pairs
    tokens = pairs // TOP_K
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = x_ptr + tokens[:, None] * stride_xm + offs_k[None, :]
    # w13[e] is [2N, K] row-major: gate rows [0, N), up rows [N, 2N); read as [BLOCK_K, BLOCK_N]
    g_ptrs = w_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + N * stride_wn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & k_mask[None, :], other=0.0)
        w_mask = k_mask[:, None] & n_mask[None, :]
        g = tl.load(g_ptrs, mask=w_mask, other=0.0)
        u = tl.load(u_ptrs, mask=w_mask, other=0.0)
        if IEEE:  # float32 weights: no TF32 rounding, so results match the reference
            acc_g = tl.dot(a, g, acc_g, input_precision="ieee")
            acc_u = tl.dot(a, u, acc_u, input_precision="ieee")
        else:
            acc_g = tl.dot(a, g, acc_g)
            acc_u = tl.dot(a, u, acc_u)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    out_ptrs = out_ptr + pairs[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, act.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _moe_down_kernel(a_ptr, w_ptr, out_ptr, weights_ptr, sorted_ids_ptr, expert_ids_ptr,
                     num_padded_ptr, N, K, num_pairs, stride_am, stride_we, stride_wn,
                     stride_om, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                     BLOCK_K: tl.constexpr, IEEE: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pairs = tl.load(sorted_ids_ptr + offs_m).to(tl.int64)
    valid = pairs < num_pairs
    expert = tl.load(expert_ids_ptr + pid_m).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + pairs[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_mask = offs_k < K - k0
        a = tl.load(a_ptrs, mask=valid[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    weight = tl.load(weights_ptr + pairs, mask=valid, other=0.0).to(tl.float32)
    acc = acc * weight[:, None]
    out_ptrs = out_ptr + pairs[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


class MoEDims(NamedTuple):
    num_tokens: int
    hidden: int
    num_experts: int
    inter: int
    top_k: int


def moe_dims(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
             topk_ids: torch.Tensor) -> MoEDims:
    """The problem's sizes, checked: x [T, H], w13 [E, 2I, H], w2 [E, H, I], topk_ids [T, K]."""
    num_tokens, hidden = x.shape
    num_experts, two_n, _ = w13.shape
    inter = two_n // 2
    assert w13.shape[2] == hidden and w2.shape == (num_experts, hidden, inter), (
        f"expert weights {tuple(w13.shape)} / {tuple(w2.shape)} do not fit hidden {hidden}")
    return MoEDims(num_tokens, hidden, num_experts, inter, topk_ids.shape[1])


def sorted_routing(topk_weights: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
                   block_m: int) -> tuple[torch.Tensor, ...]:
    """What the grouped kernels read: the pairs' routing weights (fp32, flat), and the pairs
    sorted by expert into blocks of block_m (sorted_ids, expert_ids, num_padded)."""
    weights = topk_weights.reshape(-1).to(torch.float32).contiguous()
    return (weights, *moe_align_block_size(topk_ids, num_experts, block_m))


def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor, config: MoEKernelConfig | None = None) -> torch.Tensor:
    """The routed experts' output [T, H] (see tessera.ops.moe for the formula)."""
    num_tokens, hidden, num_experts, inter, top_k = moe_dims(x, w13, w2, topk_ids)
    if num_tokens == 0:
        return x.new_zeros((0, hidden))
    if config is None and num_tokens * top_k <= SMALL_BATCH_MAX_PAIRS:
        return fused_moe_small_batch(x, w13, w2, topk_weights, topk_ids)
    cfg = config or get_moe_config(num_tokens, num_experts, inter, hidden, top_k)
    x = x if x.stride(-1) == 1 else x.contiguous()
    w13, w2 = w13.contiguous(), w2.contiguous()
    weights, sorted_ids, expert_ids, num_padded = sorted_routing(topk_weights, topk_ids,
                                                                 num_experts, cfg.block_m)
    num_pairs = num_tokens * top_k
    ieee = x.dtype == torch.float32
    launch = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    act = torch.empty((num_pairs, inter), dtype=x.dtype, device=x.device)
    grid = (expert_ids.numel(), triton.cdiv(inter, cfg.block_n))
    _moe_gate_up_kernel[grid](
        x, w13, act, sorted_ids, expert_ids, num_padded, inter, hidden, num_pairs,
        x.stride(0), w13.stride(0), w13.stride(1), act.stride(0), TOP_K=top_k,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, IEEE=ieee, **launch)
    down = torch.empty((num_pairs, hidden), dtype=x.dtype, device=x.device)
    grid = (expert_ids.numel(), triton.cdiv(hidden, cfg.block_n))
    _moe_down_kernel[grid](
        act, w2, down, weights, sorted_ids, expert_ids, num_padded, hidden, inter, num_pairs,
        act.stride(0), w2.stride(0), w2.stride(1), down.stride(0), BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, IEEE=ieee, **launch)
    return down.view(num_tokens, top_k, hidden).sum(dim=1)


__all__ = ["MoEDims", "fused_moe", "moe_dims", "sorted_routing"]
