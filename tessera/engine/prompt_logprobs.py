"""Prompt logprobs: the log-probability of each prompt token given the tokens before it.

A request that asks for them (`SamplingParams.prompt_logprobs`) runs its whole prompt through the
model (the scheduler gives it no prefix-cache match) in batches that keep every token's logits
(`ForwardBatch.return_all_logits`). Row k of a chunk starting at position p predicts the token at
p + k + 1. Chunks are collected as they run; a retracted request's recomputed chunks are skipped
for the positions already collected. The values are the model's own distribution (log_softmax of
the raw logits), as OpenAI's `echo` + `logprobs` and lm-evaluation-harness's loglikelihood read
them.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collect_prompt_logprobs(items: Sequence[Any], all_logits: torch.Tensor) -> None:
    """Append to each asking request's `prompt_logprobs` what this batch's rows give.

    items: the batch's BatchItems in token order (their rows of `all_logits` are consecutive)."""
    offset = 0
    for it in items:
        req = it.req
        first, rows = offset, it.num_tokens
        offset += rows
        num_top = req.params.prompt_logprobs
        if num_top is None:
            continue
        prompt_len = len(req.prompt_ids)
        begin = max(it.start, len(req.prompt_logprobs))
        end = min(it.start + rows, prompt_len - 1)
        if begin >= end:
            continue
        logits = all_logits[first + begin - it.start:first + end - it.start]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        targets = torch.tensor(req.prompt_ids[begin + 1:end + 1], dtype=torch.int64,
                               device=logprobs.device)
        chosen = logprobs.gather(-1, targets.view(-1, 1)).squeeze(-1).tolist()
        tops: list[list[tuple[int, float]]] = [[] for _ in chosen]
        if num_top > 0:
            values, ids = logprobs.topk(min(num_top, logprobs.shape[-1]), dim=-1)
            tops = [list(zip(i, v)) for i, v in zip(ids.tolist(), values.tolist())]
        req.prompt_logprobs.extend(zip(chosen, tops))
