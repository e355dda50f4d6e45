"""The `tessera::attention` splitting op: attention as a torch.library custom op.

It receives only q/k/v, an output buffer and per-layer constants; the batch and the backend come
from the forward context (tessera.forward.context). That is what lets the piecewise compiler split
the graph at attention and replay the pieces around it with padded token counts.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from tessera.forward.context import get_forward_context


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
    prepared: list = [None, None]  # [backend, its prepared call or None]

    def call() -> None:
        ctx = get_forward_context()
        backend = ctx.attn_backend
        if prepared[0] is not backend:
            prepared[:] = [backend, backend.prepare(q, k, v, out, layer_id, scaling)]
        run = prepared[1]
        if run is None:
            backend.forward(q, k, v, out, layer_id, scaling, ctx.forward_batch)
        else:
            run(ctx.forward_batch)

    return call


_attention.prepare = _prepare_attention  # type: ignore[attr-defined]
attention_op = torch.library.custom_op("tessera::attention", mutates_args=("out",))(_attention)


@attention_op.register_fake
def _(q, k, v, out, layer_id, scaling) -> None:
    return None


SPLITTING_OPS = ["tessera::attention"]
