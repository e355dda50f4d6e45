"""Row-wise argmax of [B, V] logits: the greedy token of each row, as torch.argmax picks it.

torch.argmax over one long row is slow for some lengths: 26.5 us for llama3-8b's 128256-entry
vocab on the H200 (8.6 us for qwen3-0.6b's 151936) inside a CUDA graph
(benchmarks/results/2026-11-24_h200_s9_small_kernels.json), on the critical path of every greedy
step. Two launches instead:
  1. grid (B, chunks): each program reduces BLOCK entries of one row to (max, index of its first
     occurrence) in a float32 / int32 scratch [B, chunks];
  2. grid (B,): one program per row reduces the chunks (the first chunk holding the max wins, so
     the index is the row's first maximum, as torch's).
NaN is the largest value, as for torch.argmax: a row holding NaN gives its first NaN's index.
No atomics and no state kept between launches: the scratch is allocated per call (from the
graph's pool when captured), so the kernels are safe to capture and replay. The sampler calls
this eagerly every step, so after the first call per shape the kernels are launched through
their compiled launchers (tessera.ops.triton.launch: ~5 us a launch instead of the JIT's ~30).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.ops.triton.launch import KernelLauncher, metadata_variant
from tessera.ops.triton.pdl import launch_options, use_pdl

BLOCK = 4096  # entries per chunk program: 32 programs a row for a 128256-entry vocab
_NONE = tl.constexpr(2**31 - 1)  # "no index" in the min-reductions below


@triton.jit
def _first_max(values, index):
    """(max, index of its first occurrence) of a 1-D block, NaN counting as the largest value:
    then (NaN, index of the first NaN). Masked-out entries must hold -inf and an index past
    every real one."""
    is_nan = values != values  # noqa: PLR0124  (NaN is the one value unequal to itself)
    first_nan = tl.min(tl.where(is_nan, index, _NONE))
    best = tl.max(tl.where(is_nan, float("-inf"), values))
    first_best = tl.min(tl.where(values == best, index, _NONE))
    has_nan = first_nan != _NONE
    return tl.where(has_nan, float("nan"), best), tl.where(has_nan, first_nan, first_best)


@triton.jit
def _argmax_chunks_kernel(x_ptr, max_ptr, idx_ptr, V, stride_x, CHUNKS,
                          BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # see tessera.ops.triton.pdl
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    offs = chunk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < V
    values = tl.load(x_ptr + row.to(tl.int64) * stride_x + offs, mask=mask,
                     other=float("-inf")).to(tl.float32)
    best, index = _first_max(values, tl.where(mask, offs, _NONE))
    tl.store(max_ptr + row * CHUNKS + chunk, best)
    tl.store(idx_ptr + row * CHUNKS + chunk, index)


@triton.jit
def _argmax_rows_kernel(max_ptr, idx_ptr, out_ptr, CHUNKS, BLOCK_C: tl.constexpr,
                        PDL: tl.constexpr):
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0)
    offs = tl.arange(0, BLOCK_C)
    mask = offs < CHUNKS
    best = tl.load(max_ptr + row * CHUNKS + offs, mask=mask, other=float("-inf"))
    index = tl.load(idx_ptr + row * CHUNKS + offs, mask=mask, other=_NONE)
    # chunks are in index order: the first chunk with the row's max (or NaN) holds its first
    # occurrence, and that chunk's index is the smallest among the chunks that tie
    _, first = _first_max(best, index)
    tl.store(out_ptr + row, first.to(tl.int64))


_LAUNCHERS = (KernelLauncher(_argmax_chunks_kernel), KernelLauncher(_argmax_rows_kernel))


def argmax(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [B, V] (float, unit stride along V) -> int64 [B]: torch.argmax(x, dim=-1), written to
    `out` (int64 [B], contiguous) when given."""
    assert x.dim() == 2 and x.stride(1) == 1, (x.shape, x.stride())
    rows, v = x.shape
    assert v < _NONE.value, "row too long for int32 indices"
    if out is None:
        out = torch.empty(rows, dtype=torch.int64, device=x.device)
    assert out.shape == (rows,) and out.dtype == torch.int64 and out.is_contiguous(), (
        out.shape, out.dtype)
    if rows == 0:
        return out
    assert v > 0, "argmax of an empty row"
    chunks = triton.cdiv(v, BLOCK)
    best = torch.empty(rows, chunks, dtype=torch.float32, device=x.device)
    index = torch.empty(rows, chunks, dtype=torch.int32, device=x.device)
    pdl = use_pdl(x.device)
    # the key fixes everything the JIT specialises on: dtypes and pointer alignment, the row
    # length and stride (a vocab size: one or two per engine), PDL
    key = (metadata_variant(x, best, index, out), v, x.stride(0), pdl)
    chunks_launch, rows_launch = _LAUNCHERS
    chunks_launch(key, (rows, chunks), (x, best, index, v, x.stride(0), chunks),
                  {"BLOCK": BLOCK, "PDL": pdl, "num_warps": 8, **launch_options(pdl)})
    rows_launch(key, (rows,), (best, index, out, chunks),
                {"BLOCK_C": max(16, triton.next_power_of_2(chunks)), "PDL": pdl,
                 "num_warps": 1, **launch_options(pdl)})
    return out


__all__ = ["argmax"]
