"""apply_token_bitmask(logits, bitmask): -inf on every token a grammar forbids.

The bitmask is xgrammar's layout: int32 [B, ceil(V / 32)], bit `j % 32` of word `j // 32` set when
token j is allowed. A row of all ones (-1) leaves its logits unchanged, so requests without a
grammar share the batch's mask at no cost beyond the one pass.

`tessera::apply_token_bitmask` is a torch.library custom op with a fake kernel, so it can sit
inside a compiled or captured region as one opaque node. On CUDA with Triton the op is one Triton
launch (`tessera.ops.triton.bitmask`); elsewhere, and under `native_ops()`, the torch reference
below. Functional like every `tessera::*` op: the masked logits are a new tensor.
"""
from __future__ import annotations

import torch

from tessera.ops.base import triton_available, use_native_ops

_BIT_SHIFTS: dict[torch.device, torch.Tensor] = {}


def bitmask_words(vocab_size: int) -> int:
    """int32 words per row of a bitmask over `vocab_size` tokens."""
    return (vocab_size + 31) // 32


def unpack_bitmask(bitmask: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """int32 [B, W] -> bool [B, vocab_size], True where the token is allowed."""
    shifts = _BIT_SHIFTS.get(bitmask.device)
    if shifts is None:
        shifts = _BIT_SHIFTS[bitmask.device] = torch.arange(32, dtype=torch.int32,
                                                            device=bitmask.device)
    bits = (bitmask.unsqueeze(-1) >> shifts) & 1
    return bits.view(bitmask.shape[0], -1)[:, :vocab_size].bool()


def apply_token_bitmask_reference(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """The definition: logits where the bit is set, -inf elsewhere. Tokens past the bitmask's
    width (a mask narrower than the logits) are forbidden."""
    v = logits.shape[-1]
    allowed = unpack_bitmask(bitmask, min(v, bitmask.shape[-1] * 32))
    if allowed.shape[-1] < v:
        allowed = torch.nn.functional.pad(allowed, (0, v - allowed.shape[-1]), value=False)
    return logits.masked_fill(~allowed, float("-inf"))


def _use_triton(logits: torch.Tensor) -> bool:
    return (logits.is_cuda and logits.dim() == 2 and logits.stride(1) == 1
            and triton_available() and not use_native_ops())


@torch.library.custom_op("tessera::apply_token_bitmask", mutates_args=())
def apply_token_bitmask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """logits [B, V] float, bitmask int32 [B, W] -> masked copy of logits."""
    assert logits.dim() == 2 and bitmask.dim() == 2 and bitmask.shape[0] == logits.shape[0], (
        logits.shape, bitmask.shape)
    assert bitmask.dtype == torch.int32, bitmask.dtype
    if _use_triton(logits):
        from tessera.ops.triton.bitmask import apply_token_bitmask as kernel

        return kernel(logits, bitmask)
    return apply_token_bitmask_reference(logits, bitmask)


@apply_token_bitmask.register_fake
def _apply_token_bitmask_fake(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


__all__ = ["apply_token_bitmask", "apply_token_bitmask_reference", "bitmask_words",
           "unpack_bitmask"]
