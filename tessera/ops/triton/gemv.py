"""y = x @ W.T (+ b) for ONE row of x: a bandwidth-bound matrix-vector product.

At one decode token every linear layer is a GEMV: the weight is read once and each element is
used once, so the time is the weight's bytes over memory bandwidth plus the launch. A program
owns BLOCK_N output features: it streams its [BLOCK_N, K] strip of W in [BLOCK_N, BLOCK_K] tiles
(contiguous along K: 16-byte loads), multiplies by the matching slice of x and accumulates in a
float32 [BLOCK_N, BLOCK_K] tile, reduced across K once at the end (no per-tile shuffles).

Measured on the H200 (`benchmarks/decode_opt/profile_decode.py gemv`, bf16, weights rotated past
L2, inside a CUDA graph; that sweep's JSON was not kept): against cuBLAS 1.1-3.8x faster on the
qwen3-0.6b shapes (o_proj 12.5 -> 3.3 us) and 1.03-1.27x on llama3-8b's, 4-5% on the LM heads.
Splitting K across programs never won there, so there is none. `gemv_config` encodes the sweep's
winners. End to end: benchmarks/results/2026-11-23_h200_s2_decode_variants.txt.

With PDL (tessera.ops.triton.pdl) the program loads its first weight tile before waiting for the
previous kernel: the weight stream starts while the previous kernel drains.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from tessera.ops.triton.pdl import launch_options, use_pdl


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 EVEN: tl.constexpr, PDL: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    first = 0
    if PDL:
        # weights are never written by a predecessor: the first tile may load before the wait
        tl.extra.cuda.gdc_launch_dependents()
        mask_k0 = offs_k < K
        w0 = tl.load(w_ptrs, mask=mask_n[:, None] & mask_k0[None, :], other=0.0)
        tl.extra.cuda.gdc_wait()
        x0 = tl.load(x_ptr + offs_k, mask=mask_k0, other=0.0)
        acc += w0.to(tl.float32) * x0.to(tl.float32)[None, :]
        first = BLOCK_K
    for k0 in range(first, K, BLOCK_K):
        if EVEN:
            w = tl.load(w_ptrs + k0)
            x = tl.load(x_ptr + k0 + offs_k)
        else:
            mask_k = (k0 + offs_k) < K
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            x = tl.load(x_ptr + k0 + offs_k, mask=mask_k, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    block_n: int = 4
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 1


def gemv_config(n: int, k: int) -> GemvConfig:
    """Tile config by weight shape [N, K]: the H200 sweep's winners (within 1-2% of each shape's
    best of 46 configs; benchmarks/decode_opt/profile_decode.py gemv)."""
    if n <= 2048:  # few output rows: 2 rows per program keeps >= 512 programs in flight
        cfg = GemvConfig(2, 1024, 4, 1)
    elif k >= 4096 and n <= 4096:  # long rows: 16 rows x 1024 per program, 8 warps
        cfg = GemvConfig(16, 1024, 8, 3)
    elif n <= 4096:
        cfg = GemvConfig(4, 512, 4, 3)
    elif n <= 8192:
        cfg = GemvConfig(8, 512, 4, 3)
    else:  # LM heads, wide MLP projections
        cfg = GemvConfig(16, 256, 4, 1)
    block_k = min(cfg.block_k, max(16, triton.next_power_of_2(k)))
    return dataclasses.replace(cfg, block_k=block_k)


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig | None = None) -> torch.Tensor:
    """x [1, K] or [K] (contiguous), weight [N, K] (contiguous rows), bias [N] -> y [1, N] / [N]
    in x's dtype, accumulated in float32."""
    n, k = weight.shape
    assert x.shape[-1] == k and x.numel() == k, "gemv takes a single row"
    assert weight.stride(1) == 1 and x.is_contiguous()
    config = config or gemv_config(n, k)
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    if k == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand_as(y))
    pdl = use_pdl(x.device)
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
        HAS_BIAS=bias is not None, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        EVEN=n % config.block_n == 0 and k % config.block_k == 0, PDL=pdl,
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_options(pdl))
    return y
