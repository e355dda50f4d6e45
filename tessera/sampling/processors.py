"""Logits processors that act before sampling: OpenAI's `logit_bias` and a grammar's token mask.

Both act on the logits after penalties and before temperature, as vLLM and SGLang apply them, so a
bias of -100 or a masked token is (practically) never drawn whatever the temperature. Sampled
tokens' reported logprobs stay those of the model ("raw" mode), as OpenAI reports them.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from tessera.ops.bitmask import apply_token_bitmask
from tessera.platforms.transfer import to_device_async
from tessera.sampling.params import SamplingParams


@dataclasses.dataclass
class LogitBias:
    """The batch's biases as one sparse update: logits[rows[i], ids[i]] += values[i]."""

    rows: torch.Tensor    # [M] int64
    ids: torch.Tensor     # [M] int64
    values: torch.Tensor  # [M] float32

    @classmethod
    def build(cls, params: Sequence[SamplingParams], vocab_size: int,
              device: torch.device | str) -> LogitBias | None:
        """None when no request of the batch has a bias. Ids >= vocab_size never get here
        (the engine refuses them when the request arrives)."""
        rows: list[int] = []
        ids: list[int] = []
        values: list[float] = []
        for r, p in enumerate(params):
            for tid, value in (p.logit_bias or {}).items():
                assert tid < vocab_size, "logit_bias ids are checked on admission"
                rows.append(r)
                ids.append(tid)
                values.append(value)
        if not rows:
            return None
        return cls(to_device_async(rows, torch.int64, device),
                   to_device_async(ids, torch.int64, device),
                   to_device_async(values, torch.float32, device))


def apply_logit_bias(logits: torch.Tensor, bias: LogitBias) -> torch.Tensor:
    """A new tensor: logits plus the biases (float32 logits)."""
    return logits.index_put((bias.rows, bias.ids), bias.values, accumulate=True)


def apply_grammar_mask(logits: torch.Tensor, bitmask: torch.Tensor) -> torch.Tensor:
    """-inf where the row's grammar forbids the token (`tessera::apply_token_bitmask`)."""
    return torch.ops.tessera.apply_token_bitmask(logits, bitmask.to(logits.device,
                                                                    non_blocking=True))


__all__ = ["LogitBias", "apply_grammar_mask", "apply_logit_bias", "apply_token_bitmask"]
