"""Block-scaled FP8 GEMM (W8A8): the dispatcher that runs the Triton kernel on CUDA/MUSA and the
torch reference elsewhere. The formats, the reference and the block (de)quantizers are
tessera.ops.fp8_reference (re-exported here).

`w8a8_block_fp8_matmul(x_q, x_s, weight, weight_scale_inv, block, out_dtype)` computes
dequant(x) @ dequant(W)^T for activations quantized per token group (tessera.ops.quant) and a
block-quantized weight. The Triton kernel (tessera.ops.triton.fp8_gemm, through the custom op
`tessera::w8a8_block_fp8_matmul`) is tested against `w8a8_block_fp8_matmul_torch`.
"""
from __future__ import annotations

import torch

from tessera.ops import custom_ops  # noqa: F401  (registers tessera::w8a8_block_fp8_matmul)
from tessera.ops.base import triton_available
from tessera.ops.fp8_reference import (
    FP8_MAX,
    dequantize_block_fp8,
    quantize_block_fp8,
    w8a8_block_fp8_matmul_torch,
)


def w8a8_block_fp8_matmul(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                          b_scales: torch.Tensor, block: tuple[int, int],
                          out_dtype: torch.dtype) -> torch.Tensor:
    """Functional form: the Triton kernel on CUDA/MUSA devices with Triton, the reference
    otherwise (the choice reads only the device, static under torch.compile)."""
    if a.device.type in ("cuda", "musa") and triton_available():
        return torch.ops.tessera.w8a8_block_fp8_matmul(a, a_scales, b, b_scales, block[0],
                                                       block[1], out_dtype)
    return w8a8_block_fp8_matmul_torch(a, a_scales, b, b_scales, block, out_dtype)


__all__ = ["FP8_MAX", "dequantize_block_fp8", "quantize_block_fp8", "w8a8_block_fp8_matmul",
           "w8a8_block_fp8_matmul_torch"]
