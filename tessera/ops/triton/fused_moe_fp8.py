"""Fused mixture-of-experts with block-FP8 expert weights (W8A8, block-scaled).

The same two grouped GEMMs over expert-sorted blocks of (token, k) pairs as
tessera.ops.triton.fused_moe, with FP8 operands:

* expert weights w13 [E, 2I, H] / w2 [E, H, I] float8_e4m3fn with block scales
  w13_scale_inv [E, 2I/bn, H/bk] / w2_scale_inv [E, H/bn, I/bk] (dequantized = fp8 * scale_inv
  per [bn, bk] block, as HF "fp8" checkpoints store each expert's `weight_scale_inv`);
* activations quantized per token in groups of bk (tessera.ops.triton.fp8_quant): x before the
  gate/up GEMM, the SiLU·mul output before the down GEMM.

The K loop steps by exactly bk, so each step multiplies its fp8 x fp8 partial product (fp32
accumulation) by one activation scale per row and one weight scale per column. I must be a
multiple of bn, so a gate column's block and its up column's block are both whole blocks.
The reference is tessera.ops.moe.fused_moe_fp8_torch.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from tessera.ops.triton.fp8_quant import per_token_group_quant_fp8
from tessera.ops.triton.fused_moe import moe_dims, sorted_routing
from tessera.ops.triton.moe_config import MoEKernelConfig, get_moe_config


@triton.jit
def _fp8_step(a, b, a_s, b_s, acc, FP8_DOT: tl.constexpr):
    if FP8_DOT:
        part = tl.dot(a, b)
    else:  # e4m3 values are exact in float32 (TF32 on the GPU keeps them exact too)
        part = tl.dot(a.to(tl.float32), b.to(tl.float32))
    return acc + part * a_s[:, None] * b_s[None, :]


@triton.jit
def _moe_fp8_gate_up_kernel(x_ptr, xs_ptr, w_ptr, ws_ptr, out_ptr, sorted_ids_ptr,
                            expert_ids_ptr, num_padded_ptr, N, K, num_pairs, stride_xm,
                            stride_xsm, stride_we, stride_wn, stride_wse, stride_wsn, stride_om,
                            TOP_K: tl.constexpr, GROUP_N: tl.constexpr, BLOCK_M: tl.constexpr,
                            BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                            FP8_DOT: tl.constexpr):
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
    as_ptrs = xs_ptr + tokens * stride_xsm
    # w13[e] is [2N, K]: gate rows [0, N), up rows [N, 2N); read as [BLOCK_K, BLOCK_N]
    g_ptrs = w_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    u_ptrs = g_ptrs + N * stride_wn
    gs_ptrs = ws_ptr + expert * stride_wse + (offs_n // GROUP_N) * stride_wsn
    us_ptrs = ws_ptr + expert * stride_wse + ((offs_n + N) // GROUP_N) * stride_wsn
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - g * BLOCK_K
        a = tl.load(a_ptrs, mask=valid[:, None] & k_mask[None, :], other=0.0)
        a_s = tl.load(as_ptrs + g, mask=valid, other=0.0)
        w_mask = k_mask[:, None] & n_mask[None, :]
        gw = tl.load(g_ptrs, mask=w_mask, other=0.0)
        uw = tl.load(u_ptrs, mask=w_mask, other=0.0)
        acc_g = _fp8_step(a, gw, a_s, tl.load(gs_ptrs + g, mask=n_mask, other=0.0), acc_g,
                          FP8_DOT)
        acc_u = _fp8_step(a, uw, a_s, tl.load(us_ptrs + g, mask=n_mask, other=0.0), acc_u,
                          FP8_DOT)
        a_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    act = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u
    out_ptrs = out_ptr + pairs[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, act.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


@triton.jit
def _moe_fp8_down_kernel(a_ptr, as_ptr, w_ptr, ws_ptr, out_ptr, weights_ptr, sorted_ids_ptr,
                         expert_ids_ptr, num_padded_ptr, N, K, num_pairs, stride_am,
                         stride_asm, stride_we, stride_wn, stride_wse, stride_wsn, stride_om,
                         GROUP_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, FP8_DOT: tl.constexpr):
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
    as_ptrs = as_ptr + pairs * stride_asm
    w_ptrs = w_ptr + expert * stride_we + offs_n[None, :] * stride_wn + offs_k[:, None]
    ws_ptrs = ws_ptr + expert * stride_wse + (offs_n // GROUP_N) * stride_wsn
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - g * BLOCK_K
        a = tl.load(a_ptrs, mask=valid[:, None] & k_mask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc = _fp8_step(a, w, tl.load(as_ptrs + g, mask=valid, other=0.0),
                        tl.load(ws_ptrs + g, mask=n_mask, other=0.0), acc, FP8_DOT)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    weight = tl.load(weights_ptr + pairs, mask=valid, other=0.0).to(tl.float32)
    acc = acc * weight[:, None]
    out_ptrs = out_ptr + pairs[:, None] * stride_om + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=valid[:, None] & n_mask[None, :])


def fused_moe_fp8(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  w13_scale_inv: torch.Tensor, w2_scale_inv: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, block_n: int, block_k: int,
                  fp8_dot: bool = True, config: MoEKernelConfig | None = None) -> torch.Tensor:
    """The routed experts' output [T, H] in x's dtype (formats: the module docstring)."""
    num_tokens, hidden, num_experts, inter, top_k = moe_dims(x, w13, w2, topk_ids)
    assert inter % block_n == 0 and hidden % block_k == 0 and inter % block_k == 0, (
        f"block-FP8 experts need I ({inter}) and H ({hidden}) in whole [{block_n}, {block_k}] "
        f"blocks")
    if num_tokens == 0:
        return x.new_zeros((0, hidden))
    cfg = config or get_moe_config(num_tokens, num_experts, inter, hidden, top_k)
    cfg = dataclasses.replace(cfg, block_k=block_k)  # one scale block per K step
    x_q, x_s = per_token_group_quant_fp8(x, block_k)
    w13, w2 = w13.contiguous(), w2.contiguous()
    w13_s, w2_s = w13_scale_inv.contiguous(), w2_scale_inv.contiguous()
    weights, sorted_ids, expert_ids, num_padded = sorted_routing(topk_weights, topk_ids,
                                                                 num_experts, cfg.block_m)
    num_pairs = num_tokens * top_k
    launch = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    act = torch.empty((num_pairs, inter), dtype=x.dtype, device=x.device)
    grid = (expert_ids.numel(), triton.cdiv(inter, cfg.block_n))
    _moe_fp8_gate_up_kernel[grid](
        x_q, x_s, w13, w13_s, act, sorted_ids, expert_ids, num_padded, inter, hidden, num_pairs,
        x_q.stride(0), x_s.stride(0), w13.stride(0), w13.stride(1), w13_s.stride(0),
        w13_s.stride(1), act.stride(0), TOP_K=top_k, GROUP_N=block_n, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_K=block_k, FP8_DOT=fp8_dot, **launch)
    act_q, act_s = per_token_group_quant_fp8(act, block_k)
    down = torch.empty((num_pairs, hidden), dtype=x.dtype, device=x.device)
    grid = (expert_ids.numel(), triton.cdiv(hidden, cfg.block_n))
    _moe_fp8_down_kernel[grid](
        act_q, act_s, w2, w2_s, down, weights, sorted_ids, expert_ids, num_padded, hidden, inter,
        num_pairs, act_q.stride(0), act_s.stride(0), w2.stride(0), w2.stride(1), w2_s.stride(0),
        w2_s.stride(1), down.stride(0), GROUP_N=block_n, BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n, BLOCK_K=block_k, FP8_DOT=fp8_dot, **launch)
    return down.view(num_tokens, top_k, hidden).sum(dim=1)


__all__ = ["fused_moe_fp8"]
