"""Workarounds for Triton's CPU interpreter (TRITON_INTERPRET=1: tests and `--smoke` benches).

Triton 3.6's interpreter turns a loaded scalar (a 1-element array) into a loop bound with
int(array), which numpy >= 2.4 refuses ("only 0-dimensional arrays can be converted to Python
scalars"; triton-lang/triton#9171, fixed upstream after 3.6). Kernels whose key loop runs over a
range computed from loaded lengths (decode and extend attention, the GEMV) need the fix there.
"""
from __future__ import annotations

import os


def patch_for_numpy_2_4() -> None:
    """Give the interpreter's tensors an `__index__` that reads their single element. A no-op
    unless TRITON_INTERPRET=1, and when this Triton has no such internals; applied once."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "tessera_numpy_fix", False):
        return

    def patched(tensor, scope) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patched.tessera_numpy_fix = True
    interpreter._patch_lang_tensor = patched


__all__ = ["patch_for_numpy_2_4"]
