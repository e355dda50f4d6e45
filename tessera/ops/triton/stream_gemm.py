"""y = x @ W.T (+ b) for a few rows of x: a weight stream on the tensor cores.

A 16-token prefill multiplies every weight matrix by 16 rows: the time is the weight's bytes over
memory bandwidth. cuBLAS's few-row kernels leave SMs idle on the narrow projections (llama3-8b's
qkv at 16 rows: 96 tiles for 132 SMs, 3.2 TB/s) or split K and add a reduction kernel (o_proj,
down_proj). This kernel:
  * swaps the operands ("swap AB"): a program computes a [BLOCK_N, BLOCK_M] tile of y.T as
    W_tile @ x_tile.T, so the weight rows are the MMA's M side (64+, Hopper's warpgroup MMA)
    and the few rows of x its N side (16..64; more rows take more row tiles, whose programs
    run side by side and share each weight tile through L2);
  * splits K across SPLIT programs per tile when there are too few tiles for the SMs; the
    partial tiles go to a float32 workspace and the last program of a tile to finish (an atomic
    counter per tile) adds them up and writes y: one launch, no reduction kernel. That program
    resets the counter, so the next launch (or graph replay) starts from zero;
  * with PDL (tessera.ops.triton.pdl) loads its first weight tile before waiting for the previous
    kernel: the weights never depend on it.
Rounding: float32 accumulation, one rounding to y's dtype (the split order is fixed: partials
are added in split order, so results are deterministic).
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from tessera.ops.triton.pdl import launch_options, use_pdl


@triton.jit
def _stream_gemm_kernel(x_ptr, w_ptr, b_ptr, y_ptr, ws_ptr, count_ptr, M, N, K_PER_SPLIT,
                        stride_xm, stride_wn, stride_ym, TILES_M,
                        SPLIT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
    # program -> (feature tile, K split, row tile), row tiles fastest: the programs that read
    # the same weight tile run side by side (one DRAM read, the others from L2)
    pid = tl.program_id(0)
    tile_m = pid % TILES_M
    split = (pid // TILES_M) % SPLIT
    tile_n = pid // (TILES_M * SPLIT)
    tile = tile_n * TILES_M + tile_m  # the output tile: its workspace slot and counter
    offs_n = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    offs_k = split * K_PER_SPLIT + tl.arange(0, BLOCK_K)  # K_PER_SPLIT % BLOCK_K == 0
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    x_ptrs = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    first = 0
    if PDL:
        # the weights are never written by a predecessor: the first tile loads before the wait
        w = tl.load(w_ptrs, mask=mask_n[:, None], other=0.0)
        tl.extra.cuda.gdc_wait()
        x = tl.load(x_ptrs, mask=mask_m[:, None], other=0.0)
        acc = tl.dot(w, tl.trans(x), acc)
        first = BLOCK_K
    for k0 in range(first, K_PER_SPLIT, BLOCK_K):
        w = tl.load(w_ptrs + k0, mask=mask_n[:, None], other=0.0)
        x = tl.load(x_ptrs + k0, mask=mask_m[:, None], other=0.0)
        acc = tl.dot(w, tl.trans(x), acc)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    # y[m, n] = acc[n, m]
    y_ptrs = y_ptr + offs_m[None, :].to(tl.int64) * stride_ym + offs_n[:, None]
    y_mask = mask_n[:, None] & mask_m[None, :]
    if SPLIT == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
        tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=y_mask)
    else:
        tile_elems = BLOCK_N * BLOCK_M
        part = tl.arange(0, BLOCK_N)[:, None] * BLOCK_M + tl.arange(0, BLOCK_M)[None, :]
        tile_ws = ws_ptr + tile.to(tl.int64) * SPLIT * tile_elems
        tl.store(tile_ws + split * tile_elems + part, acc)
        tl.debug_barrier()  # every thread's partial is stored before the release below
        arrived = tl.atomic_add(count_ptr + tile, 1, sem="acq_rel", scope="gpu")
        if arrived == SPLIT - 1:  # the last of the tile's programs: add the partials up
            tl.debug_barrier()  # (the acquire above orders the loads below for every thread)
            total = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
            for s in tl.static_range(SPLIT):
                total += tl.load(tile_ws + s * tile_elems + part, cache_modifier=".cg")
            if HAS_BIAS:
                total += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[:, None]
            tl.store(y_ptrs, total.to(y_ptr.dtype.element_ty), mask=y_mask)
            tl.atomic_xchg(count_ptr + tile, 0, sem="relaxed", scope="gpu")


@dataclasses.dataclass(frozen=True)
class StreamConfig:
    block_n: int = 64
    block_k: int = 128
    split: int = 1
    num_warps: int = 4
    num_stages: int = 3


MAX_ROW_TILE = 64  # the MMA's N side holds up to 64 rows of x; more rows: more row tiles


def row_tile(m: int) -> int:
    """Rows per program: the MMA's N side, 16..64."""
    return min(MAX_ROW_TILE, max(16, triton.next_power_of_2(m)))


NUM_SMS = 132  # H100/H200; only sizes the split (a heuristic, not a correctness matter)


def stream_config(n: int, k: int, block_n: int = 64, block_k: int | None = None,
                  rows: int = 16) -> StreamConfig:
    """Split K in two until the tiles fill the SMs, keeping >= 2 K tiles per program. K tiles of
    128 where K allows, else 64 (stream_gemm needs K to be a multiple of one). These and the
    3-stage pipeline are the H200 sweep's winners at 16 rows
    (benchmarks/results/2026-11-23_h200_s8_stream_chain_llama3-8b.json: llama3-8b qkv split 2,
    o_proj / down split 4, gate_up 1). In the layer chain this rule is within 0.6% of each
    shape's best sweep config (..._s8_final_stream_chain_{qwen3-0.6b,llama3-8b}_16.json:
    qwen3-0.6b 0.982 vs 0.976 ms, cuBLAS 1.082; llama3-8b 4.225 vs 4.219, cuBLAS 4.386)."""
    if block_k is None:
        block_k = 128 if k % 128 == 0 else 64
    tiles = triton.cdiv(n, block_n) * triton.cdiv(rows, row_tile(rows))
    split = 1
    while (tiles * split < NUM_SMS and k % (2 * split * block_k) == 0
           and k // (2 * split) >= 2 * block_k):
        split *= 2
    return StreamConfig(block_n=block_n, block_k=block_k, split=split)


# per device: the float32 partial-tile workspace and the int32 tile counters (zero between
# launches: the last program of a tile resets its counter)
_workspaces: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
# Enough for every split launch stream_config makes: a split only doubles while
# tiles * split < NUM_SMS, so tiles * split < 2 * NUM_SMS partial tiles of <= 64 x 64.
RESERVED_FLOATS = 2 * NUM_SMS * 64 * 64
RESERVED_TILES = 4096


def reserve_workspace(device: torch.device, floats: int = RESERVED_FLOATS,
                      tiles: int = RESERVED_TILES) -> None:
    """Allocate (zero) the device's workspace now: it must exist before any CUDA graph that
    uses it is captured (a zero-fill inside a capture would only run at that graph's replay).
    The ModelRunner calls this through tessera.ops.linear.prepare_few_row_kernels."""
    device = _canonical(device)
    ws, counts = _workspaces.get(device, (None, None))
    if ws is not None and ws.numel() >= floats and counts.numel() >= tiles:
        return
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        raise RuntimeError("stream_gemm's workspace is too small and a CUDA graph is being "
                           "captured: reserve it first (stream_gemm.reserve_workspace)")
    floats = max(floats, 0 if ws is None else ws.numel())
    tiles = max(tiles, 0 if counts is None else counts.numel())
    _workspaces[device] = (torch.empty(floats, dtype=torch.float32, device=device),
                           torch.zeros(tiles, dtype=torch.int32, device=device))


def _canonical(device: torch.device) -> torch.device:
    """cuda -> cuda:<current>: the runner's device and its tensors' device are one key."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _workspace(device: torch.device, floats: int, tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    reserve_workspace(device, max(floats, RESERVED_FLOATS), max(tiles, RESERVED_TILES))
    return _workspaces[_canonical(device)]


def stream_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: StreamConfig | None = None) -> torch.Tensor:
    """x [M, K] (unit stride along K), weight [N, K] (contiguous rows), bias [N] -> y [M, N] in
    x's dtype, accumulated in float32. Meant for few rows (tessera.ops.linear decides)."""
    assert x.dim() == 2 and weight.dim() == 2 and x.shape[1] == weight.shape[1], (
        x.shape, weight.shape)
    assert x.stride(1) == 1 and weight.stride(1) == 1, "K must be the contiguous dimension"
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y
    config = config or stream_config(n, k, rows=m)
    k_per_split = k // config.split
    assert k % (config.split * config.block_k) == 0, (
        f"K={k} must split into {config.split} parts of whole {config.block_k}-wide tiles")
    block_m = row_tile(m)
    tiles_m = triton.cdiv(m, block_m)
    tiles = triton.cdiv(n, config.block_n) * tiles_m
    if config.split > 1:
        ws, counts = _workspace(x.device, tiles * config.split * config.block_n * block_m, tiles)
    else:
        ws = counts = y  # never read (SPLIT == 1)
    pdl = use_pdl(x.device)
    _stream_gemm_kernel[(tiles * config.split,)](
        x, weight, bias if bias is not None else weight, y, ws, counts, m, n, k_per_split,
        x.stride(0), weight.stride(0), y.stride(0), tiles_m, SPLIT=config.split,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=config.block_n,
        BLOCK_K=config.block_k, PDL=pdl, num_warps=config.num_warps,
        num_stages=config.num_stages, **launch_options(pdl))
    return y


__all__ = ["MAX_ROW_TILE", "StreamConfig", "reserve_workspace", "row_tile", "stream_config",
           "stream_gemm"]
