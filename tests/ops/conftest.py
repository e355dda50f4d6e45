"""Kernels run compiled on a GPU and through Triton's interpreter on CPU (small sizes only).

TRITON_INTERPRET must be set before any kernel module is imported (triton.jit reads it when it
decorates): tests/conftest.py sets it before collection, and kernel modules are imported lazily.
"""
from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _interpreter_rounds_like_compiled_triton():
    """See triton_interpreter_fix: bf16/fp8 casts in the interpreter round as on the GPU. Also
    the interpreter's loop bounds computed from arguments (tessera.ops.triton.interpreter:
    Triton 3.6 vs numpy >= 2.4; applied once, kept)."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from triton_interpreter_fix import install

    from tessera.ops.triton.interpreter import patch_for_numpy_2_4

    patch_for_numpy_2_4()
    restore = install()
    yield
    restore()


@pytest.fixture
def device() -> str:
    """Where kernels run: the GPU when there is one, else the CPU through the interpreter."""
    return DEVICE


@pytest.fixture
def fast_ops(monkeypatch):
    """Ops constructed during the test bind their Triton fast path (forward_cuda), even on CPU."""
    from tessera.layers import custom_op as base
    from tessera.platforms import CudaPlatform

    platform = CudaPlatform()
    monkeypatch.setattr(base, "current_platform", lambda: platform)
    return platform
