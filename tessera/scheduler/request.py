"""A request's life in the engine: its tokens, its KV, its sampling state and its output."""
from __future__ import annotations

import dataclasses
import enum
from typing import Any

from tessera.sampling.params import SamplingParams


class FinishReason(str, enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclasses.dataclass(eq=False)  # identity: `req in running` must not compare every field
class Request:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    seed: int                       # per-request RNG seed (drawn once when the user gave none)
    eos_token_ids: frozenset[int]
    max_total_len: int              # prompt + output may not exceed this (context length)
    arrival: float = 0.0
    output_ids: list[int] = dataclasses.field(default_factory=list)
    # KV state
    req_row: int | None = None      # row in req_to_token while it holds KV
    kv_len: int = 0                 # tokens whose KV is in the cache (through req_row)
    prefix_len: int = 0             # leading tokens whose slots belong to the prefix cache
    prefix_node: Any = None         # locked prefix-cache node (or None)
    num_cached_tokens: int = 0      # prompt tokens served from the prefix cache (first admission)
    admitted_once: bool = False
    admit_time: float | None = None  # time.monotonic() of the first admission
    num_retractions: int = 0
    # output
    finish_reason: FinishReason | None = None
    stop_str: str | None = None
    detokenizer: Any = None
    output_logprobs: list[float] = dataclasses.field(default_factory=list)
    output_top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    first_token_time: float | None = None
    # structured output: the request's grammar state (scheduler.grammar.RequestGrammar) or None
    grammar: Any = None
    # prompt logprobs (params.prompt_logprobs): one (logprob, top alternatives) per prompt token
    # after the first, filled chunk by chunk as the prompt is prefilled
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] = dataclasses.field(
        default_factory=list)
    prompt_logprobs_sent: bool = False
    # overlap schedule: tokens sampled on the device by a step whose result the engine has not
    # read yet. They count in seq_len (the next step decodes from them) but are not in
    # output_ids; pending_source is (token tensor on the device, row) of the newest one.
    pending_tokens: int = 0
    pending_source: Any = None

    @property
    def fill_ids(self) -> list[int]:
        """Every token known on the host; the KV of all but (while decoding) the last is cached."""
        return self.prompt_ids + self.output_ids

    @property
    def known_len(self) -> int:
        """Tokens known on the host (prompt + output_ids): seq_len without the pending ones."""
        return len(self.prompt_ids) + len(self.output_ids)

    def token_at(self, index: int) -> int:
        """fill_ids[index] without building fill_ids (the decode hot path reads one token)."""
        n = len(self.prompt_ids)
        return self.prompt_ids[index] if index < n else self.output_ids[index - n]

    @property
    def seq_len(self) -> int:
        """Tokens of the sequence, pending ones included (what the scheduler runs)."""
        return self.known_len + self.pending_tokens

    @property
    def may_decode(self) -> bool:
        """Another token is allowed: always while nothing is pending (a request at its limit is
        finished); with a pending token, only when that token does not reach max_new_tokens or
        the context length (it would finish the request, and a step past the context would
        write past its req_to_token row)."""
        return self.pending_tokens == 0 or (
            len(self.output_ids) + self.pending_tokens < self.params.max_new_tokens
            and self.seq_len < self.max_total_len)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    def check_finish(self, token: int) -> None:
        """Decide stop/length after `token` was appended to output_ids."""
        p = self.params
        n = len(self.output_ids)
        if n >= p.min_new_tokens:
            if not p.ignore_eos and token in self.eos_token_ids:
                self.finish_reason = FinishReason.STOP
                return
            if p.stop_token_ids and token in p.stop_token_ids:
                self.finish_reason = FinishReason.STOP
                return
        if n >= p.max_new_tokens or self.known_len >= self.max_total_len:
            self.finish_reason = FinishReason.LENGTH
