"""y = x @ W.T (+ b) for a FEW rows of x (2..16): a weight stream, like the GEMV.

A prefill of 16 tokens, or a decode batch of a few requests, multiplies every weight matrix by a
handful of rows: the time is the weight's bytes over memory bandwidth, as at one row. For the
narrow projections (N <= 4096) cuBLAS's kernels tile the output 64-128 features wide, which leaves
too few tiles for 132 SMs, so they split K and add a reduction kernel (H200, llama3-8b 16-token
prefill: o_proj 11.0 us + 1.9 us reduce for 33.5 MB, 2.6 TB/s;
benchmarks/results/2026-11-23_h200_s5_profile_prefill_llama3-8b.json).

Here a program owns BLOCK_N output features for 16 rows (the smallest tensor-core tile): it
streams its [BLOCK_N, K] strip of W in [BLOCK_N, BLOCK_K] tiles and accumulates
`x_tile @ w_tile.T` in a float32 [16, BLOCK_N] tile. Narrow strips give enough programs without
splitting K: one kernel. H200, bf16, inside CUDA graphs over weight copies that defeat L2, PDL on
(`benchmarks/prefill_opt/skinny_gemm.py`, `..._s6_skinny_gemm.json`), 16 rows, cuBLAS -> this:
llama3-8b o_proj 13.5 -> 11.8 us, down 32.4 -> 31.2; qwen3-0.6b o_proj 5.9 -> 5.5, down 7.7 ->
6.8, qkv 5.3 -> 5.2 (and o_proj at 2-4 rows 8.3-13.0 -> 5.4). The wide projections (gate_up,
llama3-8b's qkv) are no faster here than cuBLAS (57.9 vs 57.0 us at 16 rows): they keep cuBLAS
(tessera.ops.linear.MAX_FEATURES).

With PDL (tessera.ops.triton.pdl) the program loads its first weight tile before waiting for the
previous kernel, and lets its dependent launch after its weight loop, as the GEMV does.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from tessera.ops.triton.pdl import launch_options, use_pdl


@triton.jit
def _skinny_gemm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K, stride_xm, stride_wn, stride_ym,
                        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                        BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, PDL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    first = 0
    if PDL:
        # weights are never written by a predecessor: the first tile may load before the wait
        w = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
        tl.extra.cuda.gdc_wait()
        x = tl.load(x_ptrs, mask=mask_m[:, None] & (offs_k < K)[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
        first = BLOCK_K
    for k0 in range(first, K, BLOCK_K):
        if EVEN_K:
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None], other=0.0)
            x = tl.load(x_ptrs + k0, mask=mask_m[:, None], other=0.0)
        else:
            mask_k = (k0 + offs_k) < K
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            x = tl.load(x_ptrs + k0, mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(x, tl.trans(w), acc)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :],
             acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@dataclasses.dataclass(frozen=True)
class SkinnyConfig:
    block_n: int = 32
    block_k: int = 256
    num_warps: int = 4
    num_stages: int = 4


def skinny_config(n: int, k: int) -> SkinnyConfig:
    """Tile config by weight shape [N, K]: the H200 sweep's winners at 16 rows
    (benchmarks/results/2026-11-23_h200_s6_skinny_gemm.json; 5 pipeline stages throughout)."""
    if k >= 4096:  # llama3-8b's o_proj / down: 32-wide strips, 256-deep tiles
        cfg = SkinnyConfig(32, 256, 4, 5)
    elif n >= 4096:  # short rows, many features (qwen3-0.6b's qkv)
        cfg = SkinnyConfig(32, 128, 4, 5)
    else:  # short rows, few features (qwen3-0.6b's o_proj / down)
        cfg = SkinnyConfig(16, 256, 4, 5)
    block_k = min(cfg.block_k, max(16, triton.next_power_of_2(k)))
    return dataclasses.replace(cfg, block_k=block_k)


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: SkinnyConfig | None = None) -> torch.Tensor:
    """x [M, K] (unit stride along K), weight [N, K] (contiguous rows), bias [N] -> y [M, N] in
    x's dtype, accumulated in float32. Meant for a few rows (tessera.ops.linear.MAX_ROWS); more
    rows take 16 per program row of the grid (correct, but then cuBLAS is the better kernel)."""
    assert x.dim() == 2 and x.shape[1] == weight.shape[1], (x.shape, weight.shape)
    assert x.stride(1) == 1 and weight.stride(1) == 1, "K must be the contiguous dimension"
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    if k == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand_as(y))
    config = config or skinny_config(n, k)
    block_m = 16  # the smallest tensor-core tile; more rows: more program rows in the grid
    pdl = use_pdl(x.device)
    _skinny_gemm_kernel[(triton.cdiv(n, config.block_n), triton.cdiv(m, block_m))](
        x, weight, bias if bias is not None else weight, y, m, n, k, x.stride(0),
        weight.stride(0), y.stride(0), HAS_BIAS=bias is not None, BLOCK_M=block_m,
        BLOCK_N=config.block_n, BLOCK_K=config.block_k, EVEN_K=k % config.block_k == 0, PDL=pdl,
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_options(pdl))
    return y


__all__ = ["SkinnyConfig", "skinny_config", "skinny_gemm"]
