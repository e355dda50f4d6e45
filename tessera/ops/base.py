"""Switches shared by every kernel dispatcher: Triton's presence and the native-ops override.

`force_native=True` on a layer, `TESSERA_NATIVE_OPS=1` or `with native_ops():` make layers bind
their plain-PyTorch `forward_native` (benchmarks compare against it; debugging bisects with it).
The binding itself is tessera.layers.custom_op.MultiPlatformOp.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from tessera.platforms import triton_available

_force_native_depth = 0


def use_native_ops() -> bool:
    """True inside `native_ops()` or when TESSERA_NATIVE_OPS=1: new ops bind forward_native."""
    return _force_native_depth > 0 or os.environ.get("TESSERA_NATIVE_OPS", "0") == "1"


@contextlib.contextmanager
def native_ops() -> Iterator[None]:
    """Ops constructed inside this block bind their native forward (e.g. a reference model)."""
    global _force_native_depth
    _force_native_depth += 1
    try:
        yield
    finally:
        _force_native_depth -= 1


__all__ = ["native_ops", "triton_available", "use_native_ops"]
