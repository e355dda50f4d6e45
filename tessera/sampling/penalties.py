"""Repetition, frequency and presence penalties, applied to a whole batch in one pass.

Semantics (what users of HF / OpenAI / vLLM expect):
- repetition (HF `RepetitionPenaltyLogitsProcessor`): for every token that occurs in the prompt or
  the output so far, a positive logit is divided by the penalty and a negative one multiplied, so
  penalty > 1 always makes the token less likely whatever the logit's sign.
- frequency / presence (OpenAI): over output tokens only,
  `logit -= frequency * count(token) + presence * (count(token) > 0)`.
They act on the raw logits, before temperature (as vLLM does), so a penalty means the same thing
at every temperature.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from tessera.sampling.params import SamplingParams


@dataclasses.dataclass
class PenaltyInfo:
    """Per-row penalty tensors for one batch; fields are None when no row needs them."""

    repetition: torch.Tensor | None   # [B, 1] float32, 1.0 where off
    frequency: torch.Tensor | None    # [B, 1] float32, 0.0 where off
    presence: torch.Tensor | None     # [B, 1] float32, 0.0 where off
    output_counts: torch.Tensor | None  # [B, V] float32: occurrences of each token in the output
    seen: torch.Tensor | None         # [B, V] bool: token occurs in the prompt or the output

    @classmethod
    def build(cls, params: Sequence[SamplingParams],
              output_ids: Sequence[Sequence[int]] | None,
              prompt_ids: Sequence[Sequence[int]] | None,
              vocab_size: int, device: torch.device | str) -> PenaltyInfo | None:
        """None when no request uses a penalty: the common case then costs nothing."""
        need_rep = any(p.repetition_penalty != 1.0 for p in params)
        need_freq = any(p.frequency_penalty != 0.0 for p in params)
        need_pres = any(p.presence_penalty != 0.0 for p in params)
        if not (need_rep or need_freq or need_pres):
            return None
        assert output_ids is not None and len(output_ids) == len(params), \
            "penalties need every request's output ids"

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).view(-1, 1)

        counts = None
        if need_freq or need_pres:
            counts = token_counts(output_ids, vocab_size, device)
        seen = None
        if need_rep:
            assert prompt_ids is not None and len(prompt_ids) == len(params), \
                "repetition_penalty needs every request's prompt ids"
            seen = token_mask(prompt_ids, vocab_size, device)
            seen |= counts > 0 if counts is not None else token_mask(output_ids, vocab_size, device)
        return cls(
            repetition=column([p.repetition_penalty for p in params]) if need_rep else None,
            frequency=column([p.frequency_penalty for p in params]) if need_freq else None,
            presence=column([p.presence_penalty for p in params]) if need_pres else None,
            output_counts=counts, seen=seen)


def padded_ids(ids: Sequence[Sequence[int]], pad: int, device: torch.device | str
               ) -> torch.Tensor:
    """[B, max_len] int64, short rows filled with `pad`: one host->device copy for the batch."""
    width = max((len(r) for r in ids), default=0)
    rows = [list(r) + [pad] * (width - len(r)) for r in ids]
    return torch.tensor(rows, dtype=torch.int64, device=device).view(len(ids), width)


def token_counts(ids: Sequence[Sequence[int]], vocab_size: int, device: torch.device | str
                 ) -> torch.Tensor:
    """[B, V] float32 occurrence counts. Padding goes to an extra column that is cut off, so no
    per-row Python work beyond building the padded id tensor."""
    padded = padded_ids(ids, vocab_size, device)
    counts = torch.zeros(len(ids), vocab_size + 1, dtype=torch.float32, device=device)
    counts.scatter_add_(1, padded, torch.ones_like(padded, dtype=torch.float32))
    return counts[:, :vocab_size]


def token_mask(ids: Sequence[Sequence[int]], vocab_size: int, device: torch.device | str
               ) -> torch.Tensor:
    """[B, V] bool: which tokens occur in each row (same padding trick as token_counts)."""
    padded = padded_ids(ids, vocab_size, device)
    mask = torch.zeros(len(ids), vocab_size + 1, dtype=torch.bool, device=device)
    mask.scatter_(1, padded, True)
    return mask[:, :vocab_size]


def apply_penalties(logits: torch.Tensor, info: PenaltyInfo) -> torch.Tensor:
    """Return penalized float32 logits [B, V]; `logits` itself is left untouched (it may be a
    graph's static output buffer)."""
    out = logits
    if info.repetition is not None:
        assert info.seen is not None
        penalized = torch.where(out > 0, out / info.repetition, out * info.repetition)
        out = torch.where(info.seen, penalized, out)
    if info.output_counts is not None:
        if info.frequency is not None:
            out = out - info.frequency * info.output_counts
        if info.presence is not None:
            out = out - info.presence * (info.output_counts > 0).to(out.dtype)
    return out
