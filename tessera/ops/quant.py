"""FP8 per-token-group quantization: `per_token_group_quant_fp8(x, group_size)` and its reference.

Used by block-FP8 linear layers (weights quantized in [128, 128] blocks, activations per token in
groups of 128). The Triton kernel behind `tessera::per_token_group_quant_fp8` is the fast path;
`per_token_group_quant_fp8_torch` is the reference it is tested against and the CPU path.
"""
from __future__ import annotations

import torch

from tessera.ops import custom_ops  # noqa: F401  (registers tessera::per_token_group_quant_fp8)
from tessera.ops.base import triton_available

FP8_DTYPE = torch.float8_e4m3fn
DEFAULT_EPS = 1e-10  # floor on a group's amax so an all-zero group gets a finite scale


def per_token_group_quant_fp8_torch(x: torch.Tensor, group_size: int,
                                    eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., H] -> (x_q [..., H] float8_e4m3fn, scales [..., H // group_size] float32) with
    x ~= x_q * scale per group and scale = max(amax(|group|), eps) / fp8_max."""
    hidden = x.shape[-1]
    if hidden % group_size != 0:
        raise ValueError(f"hidden size {hidden} is not a multiple of group_size {group_size}")
    finfo = torch.finfo(FP8_DTYPE)
    groups = x.to(torch.float32).reshape(*x.shape[:-1], hidden // group_size, group_size)
    amax = groups.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    # a tensor divisor: PyTorch turns division by a Python scalar into multiplication by its
    # reciprocal on CUDA, which is not the IEEE division the kernel (and the definition) uses
    scales = amax / torch.full_like(amax, finfo.max)
    x_q = (groups / scales).clamp(finfo.min, finfo.max).to(FP8_DTYPE)
    return x_q.reshape(x.shape), scales.squeeze(-1)


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int,
                              eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Functional form for callers without a module: picks the kernel by the tensor's device
    (static under torch.compile, so this traces without a branch in the graph)."""
    if x.device.type in ("cuda", "musa") and triton_available():
        return torch.ops.tessera.per_token_group_quant_fp8(x, group_size, eps)
    return per_token_group_quant_fp8_torch(x, group_size, eps)


__all__ = ["DEFAULT_EPS", "FP8_DTYPE", "per_token_group_quant_fp8", "per_token_group_quant_fp8_torch"]
