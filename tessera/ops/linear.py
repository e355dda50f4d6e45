"""linear(x, weight, bias): F.linear, except few-row inputs on CUDA run tessera's Triton kernels.

The linear layers' fusions with the step before them (tessera.layers.linear: forward_norm,
forward_silu_mul) use `use_gemv` to decide whether the one-row GEMV with the norm or the
activation as its input stage (tessera.ops.triton.gemv) takes the row.

A bs=1 decode step is ~4 linear layers per decoder layer at M = 1, each a pure weight stream.
cuBLAS's M = 1 kernels were measured 1.1-3.8x slower than that stream on qwen3-0.6b's shapes and
1.03-1.27x on llama3-8b's (H200, tessera.ops.triton.gemv), so one-row inputs take the GEMV.

The linear layers' forward (tessera.layers.linear.LinearBase) and the LM head call this. H200,
bench latency, decode graphs, bf16 (benchmarks/results/2026-11-23_h200_s2_decode_gemv_*): a bs=1
step of qwen3-0.6b 1.53 -> 1.37 ms, llama3-8b 4.79 -> 4.66 ms; bs=32 unchanged (F.linear).

2..MAX_STREAM_ROWS rows (short prefills, small decode batches) take the stream GEMM, and up to
MAX_NARROW_STREAM_ROWS rows the projections whose output is no wider than their input
(tessera.ops.triton.stream_gemm: weights on the tensor cores' wide side, K split with an
in-kernel reduction, the first weight tile loaded before the PDL wait). Measured in the chain it
runs in, not back to back (`benchmarks/prefill_opt/stream_chain.py`, H200, llama3-8b's layer
stack split like the piecewise forward, 16 rows): 4.44 ms with cuBLAS, 4.23 with it for all four
projections, although alone it only ties cuBLAS on qkv / gate_up.

The engine picks the backend once (`--linear-backend`, auto: triton on CUDA with Triton; the
ModelRunner calls `set_one_row_backend`). Our kernels are used only when all of these hold,
otherwise this is exactly F.linear:
  * the backend is "triton";
  * x is 2-D with unit stride along K, on a CUDA device, with Triton available;
  * x, weight (and bias) share a 16-bit float dtype and weight rows are contiguous;
  * one contiguous row (the GEMV, outside tracing only), or 2..MAX_STREAM_ROWS rows (up to
    MAX_NARROW_STREAM_ROWS when N <= K), K a multiple of 64 and a GPU of compute capability
    >= 9.0, where it was measured (the stream GEMM).
Under torch.compile tracing (the piecewise graphs' pieces) the row count is the dynamic token
count: testing it would add a guard, so the traced graph calls tessera::few_row_linear, which
makes the same choice when it runs (each captured size its own).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.ops import custom_ops  # noqa: F401  (registers tessera::gemv)
from tessera.ops.base import triton_available
from tessera.platforms import platform_of

_GEMV_DTYPES = (torch.bfloat16, torch.float16)
# The stream GEMM's rows: every projection up to 16 rows; narrow ones (N <= K: o_proj,
# down_proj) up to 32. H200, interleaved A/B in the real forward (ab_prefill.py --stream-gemm,
# benchmarks/results/2026-11-23_h200_s8_ab_stream_gemm_32_64.json): with the narrow ones on it
# up to 64 rows, llama3-8b 32 tokens 4.90 -> 4.77 ms but 64 tokens 5.24 -> 5.64 (decode bs=32
# 4.93 -> 4.83, bs=64 5.31 -> 5.74), although the layer chain at 64 rows had favoured it.
MAX_STREAM_ROWS = 16
MAX_NARROW_STREAM_ROWS = 32
_BACKENDS = ("triton", "torch")
_backend = "triton"  # process-wide, like the kernels it selects; the ModelRunner sets it


def set_one_row_backend(name: str) -> None:
    """"triton" (the GEMV for one-row CUDA inputs) or "torch" (always F.linear)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"few-row linear backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def one_row_backend() -> str:
    return _backend


def prepare_few_row_kernels(device: torch.device) -> None:
    """Before any CUDA graph is captured: the stream GEMM's workspace on `device`, when this
    process will use it (a no-op otherwise)."""
    # the stream GEMM only where it was measured against cuBLAS: compute capability >= 9.0
    if (_backend == "triton" and triton_available()
            and platform_of(device).has_warpgroup_mma(device)):
        from tessera.ops.triton.stream_gemm import reserve_workspace

        reserve_workspace(device)


def _eligible(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Everything but the row count and Triton's presence; nothing torch.compile cannot trace."""
    return (_backend == "triton" and x.dim() == 2 and x.device.type == "cuda"
            and x.dtype in _GEMV_DTYPES and weight.dtype == x.dtype and weight.dim() == 2
            and weight.stride(1) == 1 and x.stride(1) == 1
            and (bias is None or bias.dtype == x.dtype))


def use_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    if torch.compiler.is_compiling():
        return False
    return (_eligible(x, weight, bias) and x.shape[0] == 1 and x.is_contiguous()
            and triton_available())


def use_stream(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    """2..MAX_STREAM_ROWS rows (1 row too, when the GEMV does not take it), up to
    MAX_NARROW_STREAM_ROWS for an output no wider than the input, outside tracing."""
    if torch.compiler.is_compiling():
        return False
    limit = MAX_NARROW_STREAM_ROWS if weight.shape[0] <= x.shape[1] else MAX_STREAM_ROWS
    return (_eligible(x, weight, bias) and 0 < x.shape[0] <= limit and x.shape[1] % 64 == 0
            and triton_available() and platform_of(x.device).has_warpgroup_mma(x.device))


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    if torch.compiler.is_compiling():
        if _eligible(x, weight, bias):  # the op tests the row count (and Triton) when it runs
            return torch.ops.tessera.few_row_linear(x, weight, bias)
        return F.linear(x, weight, bias)
    if use_gemv(x, weight, bias):
        return torch.ops.tessera.gemv(x, weight, bias)
    if use_stream(x, weight, bias):
        from tessera.ops.triton.stream_gemm import stream_gemm

        return stream_gemm(x, weight, bias)
    return F.linear(x, weight, bias)


@torch.library.custom_op("tessera::few_row_linear", mutates_args=())
def few_row_linear(x: torch.Tensor, weight: torch.Tensor,
                   bias: torch.Tensor | None) -> torch.Tensor:
    """tessera.ops.linear.linear run eagerly: the GEMV for one row, the stream GEMM for a few,
    F.linear otherwise. Chosen when it runs, so a traced graph whose token count is dynamic holds
    one call and no guard on that count."""
    return linear(x, weight, bias)


@few_row_linear.register_fake
def _few_row_linear_fake(x: torch.Tensor, weight: torch.Tensor,
                         bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


__all__ = ["MAX_NARROW_STREAM_ROWS", "MAX_STREAM_ROWS", "linear", "one_row_backend",
           "prepare_few_row_kernels", "set_one_row_backend", "use_gemv", "use_stream"]
