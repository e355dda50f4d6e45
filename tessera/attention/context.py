"""The forward context: batch metadata that attention reads instead of taking it as graph inputs.

Attention is a torch.library custom op (`tessera::attention`) that receives only q/k/v, an output
buffer and per-layer constants; everything batch-dependent (ForwardBatch, KV pool, backend) comes
from here. This is what lets the piecewise compiler split the graph at attention and replay the
pieces around it with padded token counts.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tessera.attention.base import AttentionBackend
    from tessera.runner.forward_batch import ForwardBatch


@dataclasses.dataclass
class ForwardContext:
    forward_batch: ForwardBatch
    attn_backend: AttentionBackend


_context: ForwardContext | None = None


def get_forward_context() -> ForwardContext:
    if _context is None:
        raise RuntimeError("attention called outside set_forward_context(); use ModelRunner.forward")
    return _context


@contextlib.contextmanager
def set_forward_context(forward_batch: ForwardBatch, attn_backend: AttentionBackend
                        ) -> Iterator[ForwardContext]:
    global _context
    previous = _context
    _context = ForwardContext(forward_batch, attn_backend)
    try:
        yield _context
    finally:
        _context = previous


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
               layer_id: int, scaling: float) -> None:
    """q [T, Hq, D], k/v [T, Hk, D] for the new tokens; writes [T, Hq, D] into `out`.

    T may exceed the real token count (padded graph replay): rows past the real tokens are zeroed.
    """
    ctx = get_forward_context()
    ctx.attn_backend.forward(q, k, v, out, layer_id, scaling, ctx.forward_batch)


def _prepare_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                       layer_id: int, scaling: float) -> Callable[[], None]:
    """`_attention` with these arguments as a zero-argument callable, for callers that make the
    same call on the same tensors again and again (a piecewise graph's replay plan: see
    `tessera.compilation.splitting.python_op_call`). The backend of the forward context at the
    first call prepares it (`AttentionBackend.prepare`); another backend, or one with nothing to
    prepare, gets the plain call."""
    return _prepared_call(lambda backend: backend.prepare(q, k, v, out, layer_id, scaling),
                          lambda: _attention(q, k, v, out, layer_id, scaling))


def _prepared_call(prepare: Callable[[AttentionBackend], Callable[[ForwardBatch], None] | None],
                   plain: Callable[[], None],
                   use_prepared: Callable[[ForwardContext], bool] = lambda ctx: True
                   ) -> Callable[[], None]:
    """A zero-argument call that runs `prepare(backend)`'s callable on the forward context's batch,
    prepared once per backend, where `use_prepared(context)` holds and one was made; `plain()`
    otherwise."""
    prepared: list = [None, None]  # [backend, its prepared call or None]

    def call() -> None:
        ctx = get_forward_context()
        backend = ctx.attn_backend
        if not use_prepared(ctx):
            plain()
            return
        if prepared[0] is not backend:
            prepared[:] = [backend, prepare(backend)]
        run = prepared[1]
        if run is None:
            plain()
        else:
            run(ctx.forward_batch)

    return call


_attention.prepare = _prepare_attention  # type: ignore[attr-defined]
attention_op = torch.library.custom_op("tessera::attention", mutates_args=("out",))(_attention)


@attention_op.register_fake
def _(q, k, v, out, layer_id, scaling) -> None:
    return None


def _fuses_q_rope(ctx: ForwardContext) -> bool:
    from tessera.runner.forward_batch import ForwardMode

    return (getattr(ctx.attn_backend, "fuses_extend_q_rope", False)
            and ctx.forward_batch.mode is not ForwardMode.DECODE)


def _attention_q_rope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                      cos_sin_cache: torch.Tensor, out: torch.Tensor, layer_id: int,
                      scaling: float) -> None:
    """`_attention` for a q that arrives WITHOUT its rotary embedding (NeoX, cos | sin rows of
    cos_sin_cache at positions [T]); k already has its own. A backend that fuses q's rotary into
    its extend kernel (`fuses_extend_q_rope`) gets `q_rope=(positions, cos_sin_cache)`; otherwise
    (and for decode batches) q is rotated here first (the native formula) and attention runs as
    `_attention`. The model calls this only where the backend fuses it (Attention.fuse_q_rope)."""
    ctx = get_forward_context()
    if _fuses_q_rope(ctx):
        ctx.attn_backend.forward(q, k, v, out, layer_id, scaling, ctx.forward_batch,
                                 q_rope=(positions, cos_sin_cache))
    else:
        from tessera.ops.rotary import rotate_native

        q = rotate_native(positions[:q.shape[0]], q, cos_sin_cache)
        ctx.attn_backend.forward(q, k, v, out, layer_id, scaling, ctx.forward_batch)


def _prepare_attention_q_rope(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                              positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                              out: torch.Tensor, layer_id: int, scaling: float
                              ) -> Callable[[], None]:
    """`_prepare_attention` for `_attention_q_rope`."""
    q_rope = (positions, cos_sin_cache)
    return _prepared_call(
        lambda backend: backend.prepare(q, k, v, out, layer_id, scaling, q_rope=q_rope),
        lambda: _attention_q_rope(q, k, v, positions, cos_sin_cache, out, layer_id, scaling),
        _fuses_q_rope)


_attention_q_rope.prepare = _prepare_attention_q_rope  # type: ignore[attr-defined]
attention_q_rope_op = torch.library.custom_op("tessera::attention_q_rope",
                                              mutates_args=("out",))(_attention_q_rope)


@attention_q_rope_op.register_fake
def _(q, k, v, positions, cos_sin_cache, out, layer_id, scaling) -> None:
    return None


SPLITTING_OPS = ["tessera::attention", "tessera::attention_q_rope"]
