"""FP8 per-token-group quantization: `per_token_group_quant_fp8(x, group_size)` and its reference.

Used by block-FP8 linear layers (weights quantized in [128, 128] blocks, activations per token in
groups of 128). The Triton kernel behind `tessera::per_token_group_quant_fp8` is the fast path;
`per_token_group_quant_fp8_torch` is the reference it is tested against and the CPU path.
"""
from __future__ import annotations

import torch

from tessera.ops import custom_ops  # noqa: F401  (registers tessera::per_token_group_quant_fp8)
from tessera.ops.base import triton_available
from tessera.ops.fp8_reference import DEFAULT_EPS, FP8_DTYPE, per_token_group_quant_fp8_torch


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int,
                              eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional form for callers without a module: picks the kernel by the tensor's device
    (static under torch.compile, so this traces without a branch in the graph)."""
    if x.device.type in ("cuda", "musa") and triton_available():
        return torch.ops.tessera.per_token_group_quant_fp8(x, group_size, eps)
    return per_token_group_quant_fp8_torch(x, group_size, eps)


__all__ = ["DEFAULT_EPS", "FP8_DTYPE", "per_token_group_quant_fp8", "per_token_group_quant_fp8_torch"]
