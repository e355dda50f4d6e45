from __future__ import annotations

import torch
from torch import nn

from tessera.ops.base import MultiPlatformOp


class RMSNorm(MultiPlatformOp):
    """RMSNorm; with `residual` it is the fused `x + residual -> norm` returning (normed, new residual).

    Statistics are computed in float32 and the result cast back, as HF transformers does.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
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
