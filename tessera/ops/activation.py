from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.ops.base import MultiPlatformOp


class SiluAndMul(MultiPlatformOp):
    """silu(x[..., :d]) * x[..., d:] for the merged gate/up projection output."""

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]
