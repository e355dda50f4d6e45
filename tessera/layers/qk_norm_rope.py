"""QKNormRotary: per-head q/k RMSNorm then rotary embedding (Qwen3), one op.

The op owns no parameters: it is built from the attention module's own `q_norm`, `k_norm` and
(shared) `rotary_emb`, holds them without registering them again (their parameters keep their
checkpoint names; state_dict is unchanged) and reads their weights and cos/sin cache at call time.

Bindings:
* native: exactly the unfused composition `rotary.forward_native(pos, q_norm.forward_native(q),
  k_norm.forward_native(k))` (the reference the fused kernel is tested against);
* CUDA: `tessera::qk_norm_rope`, one Triton launch instead of three;
* MUSA: the three modules called one after another with their own bindings (torch_musa's fused
  RMSNorm / RoPE where present, else theirs): the fused kernel has not run on MUSA hardware, the
  vendor kernels have.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tessera.layers.custom_op import MultiPlatformOp
from tessera.layers.layernorm import RMSNorm
from tessera.layers.rotary import RotaryEmbedding
from tessera.ops import custom_ops  # noqa: F401  (registers tessera::qk_norm_rope)
from tessera.platforms import PlatformKind, current_platform


class QKNormRotary(MultiPlatformOp):
    """(q [T, Hq, D], k [T, Hk, D]) -> (rope(q_norm(q)), rope(k_norm(k))), new tensors."""

    def __init__(self, q_norm: RMSNorm, k_norm: RMSNorm, rotary: RotaryEmbedding, *,
                 force_native: bool = False) -> None:
        if q_norm.variance_epsilon != k_norm.variance_epsilon:
            raise ValueError("q_norm and k_norm must share eps to be fused")
        # a tuple is a plain attribute for nn.Module: nothing is registered twice
        self._parts = (q_norm, k_norm, rotary)
        super().__init__(force_native or q_norm.force_native or rotary.force_native)

    def dispatch_forward(self) -> Callable[..., Any]:
        if current_platform().kind is PlatformKind.MUSA:
            return self.forward_musa
        return super().dispatch_forward()

    def forward_native(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        q_norm, k_norm, rotary = self._parts
        return rotary.forward_native(positions, q_norm.forward_native(q), k_norm.forward_native(k))

    def forward_cuda(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        q_norm, k_norm, rotary = self._parts
        return torch.ops.tessera.qk_norm_rope(positions, q, k, q_norm.weight, k_norm.weight,
                                              q_norm.variance_epsilon, rotary.cos_sin_cache)

    def forward_musa(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        q_norm, k_norm, rotary = self._parts
        return rotary(positions, q_norm(q), k_norm(k))


__all__ = ["QKNormRotary"]
