from __future__ import annotations

import os
import sys

import pytest
import torch

# Without CUDA the Triton kernels run in Triton's interpreter. @triton.jit reads TRITON_INTERPRET
# when it decorates (triton.language's own helpers included), so it is set here, before any test
# module is collected: a module that imports triton first (torch.compile's inductor does) would
# otherwise leave those helpers compiled-only and the interpreter unable to call them.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
