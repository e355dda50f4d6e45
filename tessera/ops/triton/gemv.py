"""y = x @ W.T (+ b) for ONE row of x: a bandwidth-bound matrix-vector product.

At one decode token every linear layer is a GEMV: the weight is read once and each element is
used once, so the time is the weight's bytes over memory bandwidth plus the launch. A program
owns BLOCK_N output features: it streams its [BLOCK_N, K] strip of W in [BLOCK_N, BLOCK_K] tiles
(contiguous along K: 16-byte loads), multiplies by the matching slice of x and accumulates in a
float32 [BLOCK_N, BLOCK_K] tile, reduced across K once at the end (no per-tile shuffles).

SPLIT_K > 1 also splits K across programs (more programs in flight for short, wide matrices):
each writes its fp32 partial, counts itself in on a per-column-block counter (acq_rel atomic),
and the last to arrive sums the partials in a fixed order, adds the bias, writes y and resets the
counter to 0. The counters are one persistent buffer per device: launches on one stream only.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, counter_ptr, N, K, stride_wn, k_per_split,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 SPLIT_K: tl.constexpr, EVEN: tl.constexpr, PDL: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    k_start = pid_k * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    first = k_start
    if PDL > 0:
        # programmatic dependent launch (experiment): let the next kernel launch early; with
        # PDL == 2 the first weight tile (independent of the previous kernel) is loaded before
        # waiting for the previous kernel's output x
        tl.extra.cuda.gdc_launch_dependents()
        if PDL == 2:
            mask_k0 = offs_k < k_end - k_start
            w0 = tl.load(w_ptrs + k_start, mask=mask_n[:, None] & mask_k0[None, :], other=0.0)
            tl.extra.cuda.gdc_wait()
            x0 = tl.load(x_ptr + k_start + offs_k, mask=mask_k0, other=0.0)
            acc += w0.to(tl.float32) * x0.to(tl.float32)[None, :]
            first = k_start + BLOCK_K
        else:
            tl.extra.cuda.gdc_wait()
    for k0 in range(first, k_end, BLOCK_K):
        if EVEN:
            w = tl.load(w_ptrs + k0)
            x = tl.load(x_ptr + k0 + offs_k)
        else:
            mask_k = (k0 + offs_k) < k_end
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
            x = tl.load(x_ptr + k0 + offs_k, mask=mask_k, other=0.0)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    y = tl.sum(acc, axis=1)
    if SPLIT_K == 1:
        if HAS_BIAS:
            y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)
    else:
        tl.store(ws_ptr + pid_k * N + offs_n, y, mask=mask_n)
        tl.debug_barrier()
        arrived = tl.atomic_add(counter_ptr + pid_n, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT_K - 1:
            total = tl.zeros([BLOCK_N], dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):
                total += tl.load(ws_ptr + s * N + offs_n, mask=mask_n, other=0.0,
                                 cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
            tl.store(y_ptr + offs_n, total.to(y_ptr.dtype.element_ty), mask=mask_n)
            tl.atomic_xchg(counter_ptr + pid_n, 0)


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    block_n: int = 4
    block_k: int = 512
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 1
    pdl: int = 0  # programmatic dependent launch experiment: 0 off, 1 wait first, 2 prefetch


_MAX_COUNTERS = 1 << 16
_counters: dict[torch.device, torch.Tensor] = {}


def _counter_buffer(device: torch.device, blocks: int) -> torch.Tensor:
    assert blocks <= _MAX_COUNTERS, "too many column blocks for the split-K counters"
    buf = _counters.get(device)
    if buf is None:  # allocated on first (eager, warm-up) use, then kept: graphs keep the address
        buf = _counters[device] = torch.zeros(_MAX_COUNTERS, dtype=torch.int32, device=device)
    return buf


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig | None = None) -> torch.Tensor:
    """x [1, K] or [K] (contiguous), weight [N, K] (contiguous rows), bias [N] -> y [1, N] / [N]."""
    config = config or GemvConfig()
    n, k = weight.shape
    assert x.shape[-1] == k and x.numel() == k, "gemv takes a single row"
    assert weight.stride(1) == 1 and x.is_contiguous()
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    if k == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand_as(y))
    split_k = max(1, min(config.split_k, triton.cdiv(k, config.block_k)))
    k_per_split = triton.cdiv(triton.cdiv(k, split_k), config.block_k) * config.block_k
    split_k = triton.cdiv(k, k_per_split)
    blocks = triton.cdiv(n, config.block_n)
    even = n % config.block_n == 0 and k % config.block_k == 0
    if split_k > 1:
        ws = torch.empty((split_k, n), dtype=torch.float32, device=x.device)
        counters = _counter_buffer(x.device, blocks)
    else:
        ws = counters = y  # unused
    _gemv_kernel[(blocks, split_k)](
        x, weight, bias if bias is not None else weight, y, ws, counters, n, k, weight.stride(0),
        k_per_split, HAS_BIAS=bias is not None, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        SPLIT_K=split_k, EVEN=even, PDL=config.pdl, num_warps=config.num_warps,
        num_stages=config.num_stages, **({"launch_pdl": True} if config.pdl else {}))
    return y
