"""Log-probabilities of sampled tokens and of the most likely alternatives.

Which distribution they describe is a choice (`LogprobsMode`):
- "raw" (default): the model's own distribution, `log_softmax(logits)` before penalties,
  temperature, min_new_tokens masking and top-k/top-p/min-p filtering. This is what OpenAI-API
  clients and vLLM's default (`raw_logprobs`) report: a number that does not change when the user
  tweaks sampling knobs, so it is usable for scoring and confidence.
- "processed": the distribution the token was actually drawn from before filtering, i.e. after
  penalties, min_new_tokens masking and temperature (greedy rows use temperature 1), but before
  top-k/top-p/min-p truncation (vLLM's `processed_logprobs`).
"""
from __future__ import annotations

from typing import Literal

import torch

LogprobsMode = Literal["raw", "processed"]
LOGPROBS_MODES: tuple[str, ...] = ("raw", "processed")


def gather_logprobs(logits: torch.Tensor, token_ids: torch.Tensor, num_top: int
                    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """logits [B, V] -> (logprob of token_ids [B], (top values [B, num_top], top ids) or None).

    Computed for every row (one batched pass); the caller keeps the rows that asked. Top entries
    are sorted most likely first.
    """
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    chosen = logprobs.gather(-1, token_ids.view(-1, 1)).squeeze(-1)
    if num_top <= 0:
        return chosen, None
    values, ids = logprobs.topk(min(num_top, logprobs.shape[-1]), dim=-1)
    return chosen, (values, ids)
