"""Rotary position embedding, incl. Llama-3 and YaRN scaling.

The rotation is NeoX's (rotate-half: dim i pairs with dim i + D/2, as HF Llama and Qwen use).
DeepSeek's checkpoints pair neighbours instead, (x0, x1), (x2, x3), ... (`is_neox_style=False`):
those dims are first reordered evens-then-odds, which turns the neighbour pairs into rotate-half
pairs, and then rotated the NeoX way. The output keeps that order (evens, then odds); q and k
both get it, so their dot product is the one of the interleaved rotation.
"""
from __future__ import annotations

import json
import math
from typing import Any

import torch

from tessera.layers.custom_op import MultiPlatformOp
from tessera.ops import custom_ops, musa_ops  # noqa: F401  (custom_ops registers tessera::*)
from tessera.ops.base import use_native_ops


def compute_inv_freq(head_dim: int, base: float, scaling: dict[str, Any] | None,
                     max_position: int | None = None) -> torch.Tensor:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type in (None, "default"):
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(scaling["factor"])
    if rope_type == "yarn":
        return _yarn_inv_freq(inv_freq, head_dim, base, scaling, max_position)
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
        f"rope scaling type {rope_type!r} is not supported; supported: default, linear, llama3, "
        f"yarn"
    )


def yarn_get_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context `factor` times the trained one."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _yarn_factor(scaling: dict[str, Any], max_position: int | None = None) -> float:
    factor = scaling.get("factor")
    if factor is None:  # DeepSeek-V3 style: the ratio of the extended to the trained context
        assert max_position is not None, "YaRN without a factor needs max_position"
        factor = max_position / scaling["original_max_position_embeddings"]
    return float(factor)


def rope_attention_factor(scaling: dict[str, Any] | None, max_position: int | None = None
                          ) -> float:
    """The factor YaRN multiplies cos and sin by (1.0 for every other rope type): the config's
    `attention_factor`, else mscale(factor, mscale) / mscale(factor, mscale_all_dim) when both
    are given (DeepSeek), else mscale(factor)."""
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type != "yarn":
        return 1.0
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    factor = _yarn_factor(scaling, max_position)
    mscale, mscale_all_dim = scaling.get("mscale"), scaling.get("mscale_all_dim")
    if mscale and mscale_all_dim:
        return yarn_get_mscale(factor, mscale) / yarn_get_mscale(factor, mscale_all_dim)
    return yarn_get_mscale(factor)


def mla_softmax_scale(qk_head_dim: int, scaling: dict[str, Any] | None,
                      max_position: int | None = None) -> float:
    """DeepSeek's softmax scale: qk_head_dim^-0.5, times mscale(factor, mscale_all_dim)^2 under
    YaRN with `mscale_all_dim` (it tempers the non-rotary dims as well)."""
    scale = qk_head_dim ** -0.5
    rope_type = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if rope_type == "yarn" and scaling.get("mscale_all_dim"):
        mscale = yarn_get_mscale(_yarn_factor(scaling, max_position),
                                 float(scaling["mscale_all_dim"]))
        scale *= mscale * mscale
    return scale


def _yarn_inv_freq(inv_freq: torch.Tensor, head_dim: int, base: float,
                   scaling: dict[str, Any], max_position: int | None) -> torch.Tensor:
    """YaRN: high-frequency dims kept, low-frequency ones divided by `factor`, a linear ramp
    between the dims that turn beta_fast and beta_slow times over the trained context."""
    factor = _yarn_factor(scaling, max_position)
    trained = float(scaling.get("original_max_position_embeddings") or max_position)
    beta_fast = float(scaling.get("beta_fast") or 32)
    beta_slow = float(scaling.get("beta_slow") or 1)

    def dim_of(rotations: float) -> float:
        return head_dim * math.log(trained / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(beta_fast), dim_of(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, head_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the original frequency (extrapolation), 0: divided by factor
    return inv_freq / factor * (1 - keep) + inv_freq * keep


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
        is_neox_style: bool = True,
        force_native: bool = False,
    ) -> None:
        super().__init__(force_native)
        self.head_dim, self.is_neox_style = head_dim, is_neox_style
        inv_freq = compute_inv_freq(head_dim, base, scaling, max_position)
        t = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)
        # [max_position, head_dim]: cos in the first half, sin in the second (float32 always);
        # YaRN scales both by its attention factor
        scale = rope_attention_factor(scaling, max_position)
        cache = torch.cat([freqs.cos() * scale, freqs.sin() * scale], dim=-1)
        self.register_buffer("cos_sin_cache", cache, persistent=False)
        if self.bound_forward == "forward_musa":
            # muDNN's rope wants rotate-half angles [max_position, head_dim]; only kept when used
            self.register_buffer("freqs_cache", torch.cat([freqs, freqs], dim=-1),
                                 persistent=False)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        if not self.is_neox_style:
            q, k = _evens_then_odds(q), _evens_then_odds(k)
        return self._forward_method(positions, q, k)

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
             scaling: dict[str, Any] | None = None, is_neox_style: bool = True
             ) -> RotaryEmbedding:
    """One RotaryEmbedding per distinct configuration, shared by all layers: the cos/sin cache of
    a long-context model is tens of MB and must not be duplicated per layer."""
    # the binding is part of the key: a native-bound reference model must not share a fast module
    key = (head_dim, max_position, base, json.dumps(scaling, sort_keys=True), is_neox_style,
           str(torch.get_default_device()), use_native_ops())
    if key not in _ROPE_CACHE:
        _ROPE_CACHE[key] = RotaryEmbedding(head_dim, max_position, base, scaling,
                                           is_neox_style=is_neox_style)
    return _ROPE_CACHE[key]


_ROPE_CACHE: dict[tuple, RotaryEmbedding] = {}


def _evens_then_odds(x: torch.Tensor) -> torch.Tensor:
    """[..., D] with the dims reordered 0, 2, 4, ..., 1, 3, 5, ... (a copy)."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def _apply(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + _rotate_half(x) * sin


__all__ = ["RotaryEmbedding", "compute_inv_freq", "get_rope", "mla_softmax_scale",
           "rope_attention_factor", "yarn_get_mscale"]
