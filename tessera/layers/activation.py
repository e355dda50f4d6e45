from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.layers.custom_op import MultiPlatformOp
from tessera.ops import custom_ops, musa_ops  # noqa: F401  (custom_ops registers tessera::*)


class SiluAndMul(MultiPlatformOp):
    """silu(x[..., :d]) * x[..., d:] for the merged gate/up projection output.

    Fast paths: `tessera::silu_and_mul` (Triton) on CUDA; torch_musa's fused SwiGLU on MUSA.
    """

    musa_vendor_ops = (musa_ops.FUSED_SWIGLU,)

    def __init__(self, *, force_native: bool = False) -> None:
        super().__init__(force_native)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]

    def forward_cuda(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.tessera.silu_and_mul(x)

    def forward_musa(self, x: torch.Tensor) -> torch.Tensor:
        return musa_ops.silu_and_mul(x)


__all__ = ["SiluAndMul"]
