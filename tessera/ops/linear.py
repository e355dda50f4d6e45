"""linear(x, weight, bias): F.linear, except a one-row input on CUDA runs the Triton GEMV.

A bs=1 decode step is ~4 linear layers per decoder layer at M = 1, each a pure weight stream.
cuBLAS's M = 1 kernels were measured 1.1-3.8x slower than that stream on qwen3-0.6b's shapes and
1.03-1.27x on llama3-8b's (H200, tessera.ops.triton.gemv), so one-row inputs take the GEMV.

The linear layers' forward (tessera.layers.linear.LinearBase) and the LM head call this. H200,
bench latency, decode graphs, bf16 (benchmarks/results/2026-11-23_h200_s2_decode_gemv_*): a bs=1
step of qwen3-0.6b 1.53 -> 1.37 ms, llama3-8b 4.79 -> 4.66 ms; bs=32 unchanged (F.linear).
The engine picks the backend once (`--linear-backend`, auto: triton on CUDA with Triton; the
ModelRunner calls `set_one_row_backend`). The GEMV is used only when all of these hold, otherwise
this is exactly F.linear:
  * the backend is "triton";
  * not under torch.compile tracing (the piecewise graphs keep their matmul; a shape test there
    would also add a guard on the dynamic token count) -- decode CUDA graphs capture eagerly;
  * x is [1, K] and contiguous, on a CUDA device, with Triton available;
  * x, weight (and bias) share a 16-bit float dtype and weight rows are contiguous.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.ops import custom_ops  # noqa: F401  (registers tessera::gemv)
from tessera.ops.base import triton_available

_GEMV_DTYPES = (torch.bfloat16, torch.float16)
_BACKENDS = ("triton", "torch")
_backend = "triton"  # process-wide, like the kernels it selects; the ModelRunner sets it


def set_one_row_backend(name: str) -> None:
    """"triton" (the GEMV for one-row CUDA inputs) or "torch" (always F.linear)."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"one-row linear backend must be one of {_BACKENDS}, got {name!r}")
    _backend = name


def one_row_backend() -> str:
    return _backend


def use_gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> bool:
    if torch.compiler.is_compiling() or _backend != "triton":
        return False
    return (x.dim() == 2 and x.shape[0] == 1 and x.device.type == "cuda"
            and x.dtype in _GEMV_DTYPES and weight.dtype == x.dtype and weight.dim() == 2
            and weight.stride(1) == 1 and x.is_contiguous()
            and (bias is None or bias.dtype == x.dtype) and triton_available())


def linear(x: torch.Tensor, weight: torch.Tensor,
           bias: torch.Tensor | None = None) -> torch.Tensor:
    if use_gemv(x, weight, bias):
        return torch.ops.tessera.gemv(x, weight, bias)
    return F.linear(x, weight, bias)


__all__ = ["linear", "one_row_backend", "set_one_row_backend", "use_gemv"]
