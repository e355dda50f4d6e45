"""Helpers for registering fake (meta) kernels on ops that may or may not exist in this process.

Vendor kernels (torch_musa's fused RMSNorm, SwiGLU, RoPE) are registered by the vendor's C++
library under the PrivateUse1 key, often without a fake kernel, and only when that library is
installed. torch.compile needs a fake kernel to trace an op as one opaque node; registering one for
an absent op fails, and registering a second one (the vendor may ship its own in a later release)
fails too. `register_fake_if_exists` makes both cases a no-op.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import torch

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., object])


def op_exists(qualname: str) -> bool:
    """'namespace::name' is registered with the dispatcher (any overload)."""
    namespace, sep, name = qualname.partition("::")
    if not sep:
        raise ValueError(f"expected 'namespace::name', got {qualname!r}")
    return hasattr(getattr(torch.ops, namespace), name)


def has_fake_kernel(qualname: str) -> bool:
    """Whether FakeTensorMode can already run the op: a Python fake kernel, a C++ Meta kernel, or a
    composite (decomposing) kernel that needs no fake of its own.

    An op made by torch.library.custom_op is asked directly: it puts its real implementation
    under CompositeExplicitAutograd and a raising placeholder in the fake registry, so neither
    says whether `register_fake` was called."""
    from torch._library.custom_ops import OPDEFS

    if qualname in OPDEFS:
        return OPDEFS[qualname]._abstract_fn is not None
    if any(torch._C._dispatch_has_kernel_for_dispatch_key(qualname, key)
           for key in ("Meta", "CompositeImplicitAutograd", "CompositeExplicitAutograd")):
        return True
    from torch._library.simple_registry import singleton

    return singleton.find(qualname).fake_impl.kernel is not None


def register_fake_if_exists(qualname: str) -> Callable[[F], F]:
    """Decorator: register the function as `qualname`'s fake kernel if the op exists and has none.

    The decorated function is returned unchanged, so it stays callable (and testable) directly.
    """

    def decorator(fn: F) -> F:
        if not op_exists(qualname):
            logger.debug("fake kernel for %s skipped: op not registered", qualname)
            return fn
        if has_fake_kernel(qualname):
            logger.debug("fake kernel for %s skipped: it already has one", qualname)
            return fn
        torch.library.register_fake(qualname, fn)
        logger.debug("registered fake kernel for %s", qualname)
        return fn

    return decorator


__all__ = ["has_fake_kernel", "op_exists", "register_fake_if_exists"]
