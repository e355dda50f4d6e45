"""The forward context: the batch and the attention backend of the forward that is running.

Splitting ops (attention) receive only tensors and per-layer constants; everything that depends on
the batch comes from here. That is what lets the piecewise compiler split the traced graph at
attention and replay the pieces around it with padded token counts.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.forward.batch import ForwardBatch


@dataclasses.dataclass
class ForwardContext:
    forward_batch: ForwardBatch
    # an AttentionBackend (tessera.attention.base), typed loosely: forward/ sits below attention/
    attn_backend: Any


_context: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    if _context is None:
        raise RuntimeError("attention called outside set_forward_context(); use "
                           "ModelRunner.forward")
    return _context


@contextlib.contextmanager
def set_forward_context(forward_batch: ForwardBatch, attn_backend: Any) -> Iterator[ForwardContext]:
    global _context
    previous = _context
    _context = ForwardContext(forward_batch, attn_backend)
    try:
        yield _context
    finally:
        _context = previous
