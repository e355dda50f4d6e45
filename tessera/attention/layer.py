from __future__ import annotations

import torch
from torch import nn

from tessera.attention import context  # noqa: F401  (registers tessera::attention)


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
