"""torch_musa's fused kernels, as the MUSA fast paths call them, plus their fake kernels.

torch_musa registers these ops in the `aten` namespace for the PrivateUse1 (musa) key only:

* `aten::_fused_rmsnorm_forward(input, normalized_shape, eps, weight) -> (out, invvar)` (muDNN
  RMSNorm; input and weight must share a dtype).
* `aten::_fused_swiglu_forward(input) -> silu(input[..., :d]) * input[..., d:]` (muDNN SwiGlu; the
  same half order as Megatron's swiglu, which torch_musa users bind it to).
* `aten::rope(input, freqs_cis, rotary_interleaved, batch_first)` (muDNN Rope, [S, B, H, D] when
  batch_first is False, freqs_cis [S, D] of angles; rotary_interleaved=False is rotate-half).

Not every release ships every op, and not every release ships fake kernels for them, so the fakes
are registered with `register_fake_if_exists`. That decision is taken at import, so this module
first loads torch_musa (when installed): the vendor ops must be registered before we look for them. The semantics above come from torch_musa's sources;
no MUSA device was available to run them (see docs/platforms.md).
"""
from __future__ import annotations

from typing import Any

import torch

from tessera.ops.library import register_fake_if_exists
from tessera.platforms.musa import load_musa_runtime

load_musa_runtime()

FUSED_RMSNORM = "aten::_fused_rmsnorm_forward"
FUSED_SWIGLU = "aten::_fused_swiglu_forward"
ROPE = "aten::rope"


@register_fake_if_exists(FUSED_RMSNORM)
def _fused_rmsnorm_forward_fake(input: torch.Tensor, normalized_shape: list[int], eps: float,
                                weight: torch.Tensor | None = None
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    # invvar holds one float32 statistic per normalized row
    stats_shape = input.shape[: input.dim() - len(normalized_shape)]
    return (torch.empty_like(input, memory_format=torch.contiguous_format),
            input.new_empty(stats_shape, dtype=torch.float32))


@register_fake_if_exists(FUSED_SWIGLU)
def _fused_swiglu_forward_fake(input: torch.Tensor) -> torch.Tensor:
    return input.new_empty((*input.shape[:-1], input.shape[-1] // 2))


@register_fake_if_exists(ROPE)
def _rope_fake(input: torch.Tensor, freqs_cis: torch.Tensor, *args: Any,
               **kwargs: Any) -> torch.Tensor:
    # trailing flags differ between releases; the output is always a contiguous input-shaped tensor
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.ops.aten._fused_rmsnorm_forward(x, [x.shape[-1]], eps, weight)[0]


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten._fused_swiglu_forward(x)


def rope(q: torch.Tensor, k: torch.Tensor,
         freqs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hk, D], freqs [T, D] angles of each token's position.

    Tokens play the sequence axis of muDNN's [S, B, H, D] layout with B = 1, so every token gets
    its own position's angles (no shared-position assumption).
    """
    q_out = torch.ops.aten.rope(q.unsqueeze(1), freqs, False, False).squeeze(1)
    k_out = torch.ops.aten.rope(k.unsqueeze(1), freqs, False, False).squeeze(1)
    return q_out, k_out


__all__ = ["FUSED_RMSNORM", "FUSED_SWIGLU", "ROPE", "rms_norm", "rope", "silu_and_mul"]
