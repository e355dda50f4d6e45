"""The per-token-group FP8 activation quantizer as a layer (bound once like every op)."""
from __future__ import annotations

import torch

from tessera.layers.custom_op import MultiPlatformOp
from tessera.ops.quant import DEFAULT_EPS, per_token_group_quant_fp8_torch


class PerTokenGroupQuantFP8(MultiPlatformOp):
    """Triton on CUDA/MUSA (`tessera::per_token_group_quant_fp8`), the torch reference on CPU."""

    def __init__(self, group_size: int = 128, eps: float = DEFAULT_EPS, *,
                 force_native: bool = False) -> None:
        super().__init__(force_native)
        self.group_size, self.eps = group_size, eps

    def forward_native(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return per_token_group_quant_fp8_torch(x, self.group_size, self.eps)

    def forward_cuda(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.tessera.per_token_group_quant_fp8(x, self.group_size, self.eps)


__all__ = ["PerTokenGroupQuantFP8"]
