"""Kernels and their registration: torch.library custom ops with fake kernels (`tessera::*`),
Triton code (ops/triton), vendor ops (musa_ops), and the functional dispatchers that pick a kernel
per call (linear, argmax, FP8 group quant). Modules built from them live in tessera.layers."""
from tessera.ops.base import native_ops, triton_available, use_native_ops
from tessera.ops.library import register_fake_if_exists
from tessera.ops.linear import linear
from tessera.ops.quant import per_token_group_quant_fp8, per_token_group_quant_fp8_torch

__all__ = [
    "linear", "native_ops", "per_token_group_quant_fp8", "per_token_group_quant_fp8_torch",
    "register_fake_if_exists", "triton_available", "use_native_ops",
]
