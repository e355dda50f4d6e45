"""MultiPlatformOp: an nn.Module whose forward is bound ONCE, at construction, from the platform.

Rules of the layers that run kernels:

* `forward_native` is plain PyTorch. It is the reference every fast path is tested against and the
  path on CPU. Native paths are traced op by op by torch.compile (and may be fused by inductor).
* `forward_cuda` is the Triton fast path. Triton kernels are device-agnostic, so MUSA falls back to
  the same method when torch_musa has no vendor kernel for the op.
* `forward_musa` calls torch_musa's fused kernels; a subclass lists the vendor ops it needs in
  `musa_vendor_ops`, and the binding falls back to Triton, then native, when one is missing.
* The choice is made once in `dispatch_forward()` and stored; `forward` never branches on the
  platform. That keeps the traced graph free of platform checks and the dispatch cost at zero.
* What runs under torch.compile(fullgraph=True): fast paths call kernels ONLY through
  torch.library custom ops (`tessera::*`, see `tessera.ops.custom_ops`) or vendor ops, each with a
  fake (meta) kernel. Dynamo traces such a call as one opaque node using the fake kernel for
  shapes; it never looks inside, so a Triton launch can never cause a graph break. Ops return new
  tensors (mutates_args=()), so no functionalization copies appear around them. A fast path may
  branch on metadata (dtype, shape: Dynamo guards those) but never on tensor values (.item()).
* `force_native=True`, `TESSERA_NATIVE_OPS=1` or `with native_ops():` bind `forward_native` instead
  (benchmarks compare against it; debugging bisects with it).
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

from torch import nn

from tessera.ops.base import triton_available, use_native_ops
from tessera.ops.library import op_exists
from tessera.platforms import PlatformKind, current_platform

logger = logging.getLogger(__name__)


class MultiPlatformOp(nn.Module):
    # Vendor ops (qualified names) that forward_musa calls; all must exist to bind forward_musa.
    musa_vendor_ops: ClassVar[tuple[str, ...]] = ()

    def __init__(self, force_native: bool = False) -> None:
        super().__init__()
        self.force_native = force_native or use_native_ops()
        self._forward_method = self.forward_native if self.force_native else self.dispatch_forward()

    def dispatch_forward(self) -> Callable[..., Any]:
        platform = current_platform()
        kind = platform.kind
        if kind is PlatformKind.CUDA:
            return self.forward_cuda if triton_available() else self._no_triton()
        if kind is PlatformKind.MUSA:
            # imports the vendor-op fake kernels before anything can be traced
            from tessera.ops import musa_ops  # noqa: F401

            if self.musa_vendor_ops and all(map(op_exists, self.musa_vendor_ops)):
                return self.forward_musa
            if platform.supports_triton and triton_available():
                return self.forward_cuda
            return self._no_triton()
        return self.forward_cpu

    def _no_triton(self) -> Callable[..., Any]:
        logger.warning("%s: no Triton here; using the native PyTorch path", type(self).__name__)
        return self.forward_native

    @property
    def bound_forward(self) -> str:
        """Name of the bound method, e.g. 'forward_cuda' (tests and logs)."""
        return self._forward_method.__name__

    def forward(self, *args, **kwargs):
        return self._forward_method(*args, **kwargs)

    def forward_native(self, *args, **kwargs):
        raise NotImplementedError

    def forward_cuda(self, *args, **kwargs):
        return self.forward_native(*args, **kwargs)

    def forward_musa(self, *args, **kwargs):
        return self.forward_cuda(*args, **kwargs)

    def forward_cpu(self, *args, **kwargs):
        return self.forward_native(*args, **kwargs)


__all__ = ["MultiPlatformOp"]
