"""Rotary position embedding (NeoX / rotate-half layout, as HF Llama and Qwen use), incl. Llama-3 scaling."""
from __future__ import annotations

import json
import math
from typing import Any

import torch

from tessera.layers.custom_op import MultiPlatformOp
from tessera.ops import custom_ops, musa_ops  # noqa: F401  (custom_ops registers tessera::*)
from tessera.ops.base import use_native_ops


def compute_inv_freq(head_dim: int, base: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "llama3":
        factor = float(scaling["factor"])
        low_freq_factor = float(scaling["low_freq_factor"])
        high_freq_factor = float(scaling["high_freq_factor"])
        old_context_len = float(scaling["original_max_position_embeddings"])
        low_freq_wavelen = old_context_len / low_freq_factor
        high_freq_wavelen = old_context_len / high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        # long wavelengths are slowed down by `factor`; short ones untouched; smooth in between
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        is_medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
        return torch.where(is_medium, smoothed, scaled)
    raise ValueError(
        f"rope scaling type {rope_type!r} is not supported; supported: default, linear, llama3"
    )


class RotaryEmbedding(MultiPlatformOp):
    """Applies rotary embedding to q [T, Hq, D] and k [T, Hk, D] at `positions` [T].

    Returns new (q, k) tensors. Fast paths: `tessera::rotary_embedding` (Triton) on CUDA;
    torch_musa's muDNN RoPE on MUSA, which takes angles instead of cos/sin (`freqs_cache`).
    """

    musa_vendor_ops = (musa_ops.ROPE,)

    def __init__(
        self,
        head_dim: int,
        max_position: int,
        base: float,
        scaling: dict[str, Any] | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        force_native: bool = False,
    ) -> None:
        super().__init__(force_native)
        self.head_dim = head_dim
        inv_freq = compute_inv_freq(head_dim, base, scaling)
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        # [max_position, head_dim]: cos in the first half, sin in the second (float32 always)
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1)
        self.register_buffer("cos_sin_cache", cache, persistent=False)
        if self.bound_forward == "forward_musa":
            # muDNN's rope wants rotate-half angles [max_position, head_dim]; only kept when used
            self.register_buffer("freqs_cache", torch.cat([freqs, freqs], dim=-1),
                                 persistent=False)

    def forward_native(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        cos_sin = self.cos_sin_cache.index_select(0, positions)
        cos, sin = cos_sin.chunk(2, dim=-1)
        cos = torch.cat([cos, cos], dim=-1).unsqueeze(1).to(q.dtype)
        sin = torch.cat([sin, sin], dim=-1).unsqueeze(1).to(q.dtype)
        return _apply(q, cos, sin), _apply(k, cos, sin)

    def forward_cuda(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        return torch.ops.tessera.rotary_embedding(positions, q, k, self.cos_sin_cache)

    def forward_musa(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        return musa_ops.rope(q, k, self.freqs_cache.index_select(0, positions))


def get_rope(head_dim: int, max_position: int, base: float,
             scaling: dict[str, Any] | None = None) -> RotaryEmbedding:
    """One RotaryEmbedding per distinct configuration, shared by all layers: the cos/sin cache of
    a long-context model is tens of MB and must not be duplicated per layer."""
    # the binding is part of the key: a native-bound reference model must not share a fast module
    key = (head_dim, max_position, base, json.dumps(scaling, sort_keys=True),
           str(torch.get_default_device()), use_native_ops())
    if key not in _ROPE_CACHE:
        _ROPE_CACHE[key] = RotaryEmbedding(head_dim, max_position, base, scaling)
    return _ROPE_CACHE[key]


_ROPE_CACHE: dict[tuple, RotaryEmbedding] = {}


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


__all__ = ["RotaryEmbedding", "compute_inv_freq", "get_rope"]
