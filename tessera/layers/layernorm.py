from __future__ import annotations

import torch
from torch import nn

from tessera.layers.custom_op import MultiPlatformOp
from tessera.ops import custom_ops, musa_ops  # noqa: F401  (custom_ops registers tessera::*)


class RMSNorm(MultiPlatformOp):
    """RMSNorm; with `residual` it is the fused `x + residual -> norm` returning (normed, new residual).

    Statistics are computed in float32 and the result cast back, as HF transformers does.
    Fast paths: `tessera::rms_norm` / `tessera::fused_add_rms_norm` (Triton) on CUDA; torch_musa's
    fused RMSNorm on MUSA.
    """

    musa_vendor_ops = (musa_ops.FUSED_RMSNORM,)

    def __init__(self, hidden_size: int, eps: float = 1e-6, *, force_native: bool = False) -> None:
        super().__init__(force_native)
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward_native(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        orig_dtype = x.dtype
        if residual is not None:
            # HF adds the residual in the activation dtype before normalizing; so do we.
            x = x + residual
            residual = x
        x = x.to(torch.float32)
        variance = x.pow(2).mean(dim=-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        out = self.weight * x.to(orig_dtype)
        return out if residual is None else (out, residual)

    def forward_cuda(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if residual is None:
            return torch.ops.tessera.rms_norm(x, self.weight, self.variance_epsilon)
        return torch.ops.tessera.fused_add_rms_norm(x, residual, self.weight,
                                                     self.variance_epsilon)

    def forward_musa(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        if self.weight.dtype != x.dtype:
            # muDNN requires weight and input of one dtype; mixed precision takes the native path
            return self.forward_native(x, residual)
        if residual is not None:
            x = x + residual
            residual = x
        out = musa_ops.rms_norm(x, self.weight, self.variance_epsilon)
        return out if residual is None else (out, residual)


__all__ = ["RMSNorm"]
