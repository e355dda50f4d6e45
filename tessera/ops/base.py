"""MultiPlatformOp: an nn.Module whose forward is bound ONCE, at construction, from the platform.

Rule: `forward_native` is plain PyTorch and is the reference every fast path is tested against.
`forward_cuda` / `forward_musa` / `forward_cpu` fall back to `forward_native` when a subclass does not
define them. Fast paths call vendor or Triton kernels only through torch.library custom ops that carry
fake kernels, so torch.compile(fullgraph=True) traces them as single opaque nodes; native paths are
traced op by op (and may be fused by inductor).
"""
from __future__ import annotations

import torch
from torch import nn

from tessera.platforms import PlatformKind, current_platform


class MultiPlatformOp(nn.Module):
    def __init__(self, force_native: bool = False) -> None:
        super().__init__()
        self._forward_method = self.forward_native if force_native else self.dispatch_forward()

    def dispatch_forward(self):
        kind = current_platform().kind
        if kind is PlatformKind.CUDA:
            return self.forward_cuda
        if kind is PlatformKind.MUSA:
            return self.forward_musa
        return self.forward_cpu

    def forward(self, *args, **kwargs):
        return self._forward_method(*args, **kwargs)

    def forward_native(self, *args, **kwargs):
        raise NotImplementedError

    def forward_cuda(self, *args, **kwargs):
        return self.forward_native(*args, **kwargs)

    def forward_musa(self, *args, **kwargs):
        return self.forward_native(*args, **kwargs)

    def forward_cpu(self, *args, **kwargs):
        return self.forward_native(*args, **kwargs)


def use_native_ops() -> bool:
    """Tests and debugging can force every op onto its native path: TESSERA_NATIVE_OPS=1."""
    import os  # noqa: PLC0415

    return os.environ.get("TESSERA_NATIVE_OPS", "0") == "1"


__all__ = ["MultiPlatformOp", "torch", "use_native_ops"]
