from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tessera.attention import op as _op  # noqa: F401  (registers tessera::attention)
from tessera.forward.batch import ForwardMode
from tessera.forward.context import get_forward_context

if TYPE_CHECKING:
    from tessera.layers.rotary import RotaryEmbedding


class Attention(nn.Module):
    """Attention over the paged KV cache, called through the `tessera::attention` splitting op."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, scaling: float,
                 layer_id: int) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scaling, self.layer_id = scaling, layer_id

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [T, Hq*D] or [T, Hq, D]; k/v likewise with Hk. Strided views (e.g. slices of a fused
        QKV projection) are passed through as they are: backends take any token/head strides
        with a contiguous last dim, so no copy is made here."""
        t = q.shape[0]
        out = torch.empty((t, self.num_heads, self.head_dim), dtype=q.dtype, device=q.device)
        torch.ops.tessera.attention(
            q.view(t, self.num_heads, self.head_dim),
            k.view(t, self.num_kv_heads, self.head_dim),
            v.view(t, self.num_kv_heads, self.head_dim),
            out, self.layer_id, self.scaling)
        return out.view(t, self.num_heads * self.head_dim)

    def forward_rope(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor, rotary: RotaryEmbedding) -> torch.Tensor:
        """attention(rotary(positions, q, k), v), as forward() takes them.

        A DECODE batch on a backend that fuses the rotary embedding into its decode kernel
        (`AttentionSupport.fused_decode_rope`: one launch instead of two per layer) passes q and k un-rotated, when
        run eagerly or captured into a decode graph. Under torch.compile (the piecewise graphs,
        which only run extend batches) the rotary stays a separate op in the traced graph.
        """
        if not torch.compiler.is_compiling():
            ctx = get_forward_context()
            backend, batch = ctx.attn_backend, ctx.forward_batch
            if backend.support.fused_decode_rope and batch.mode is ForwardMode.DECODE:
                t = q.shape[0]
                out = torch.empty((t, self.num_heads, self.head_dim), dtype=q.dtype,
                                  device=q.device)
                backend.forward(q, k, v, out, self.layer_id, self.scaling, batch,
                                rope=(positions, rotary.cos_sin_cache))
                return out.view(t, self.num_heads * self.head_dim)
        q, k = rotary(positions, q, k)
        return self(q, k, v)
