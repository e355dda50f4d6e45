"""How much KV the running requests will still need: the estimate admission control reserves.

A running request will still write its unprefilled prompt tokens and up to
`remaining_output(req)` more output tokens. Reserving the whole output budget for every request
would admit too little (most requests stop at EOS long before max_new_tokens); reserving none
overcommits the pool, and then decode runs out of slots and retracts requests, which recompute
their KV later: the thrash this module exists to prevent. So the output budget is reserved at a
ratio (the *new-token ratio*), as SGLang does, with one addition:

* the ratio starts at `init_new_token_ratio` and decays linearly, by (1 - floor) /
  `new_token_ratio_decay_steps` per step without a retraction (the pool is being used well:
  admit more); a retraction resets it to 1.0 (everything reserved again: no new request is admitted
  until the running ones are known to fit);
* the floor is learned: the mean fraction of their output budget that recently finished
  requests actually used (once `MIN_FINISHED` have finished; `min_new_token_ratio` until then).
  A workload whose requests run to max_new_tokens (benchmarks with ignore_eos) learns a floor
  near 1.0 and stops overcommitting; a chat workload that stops early learns a low one and
  packs the pool. SGLang's floor is a constant, so a long-output workload thrashes every time
  the ratio has decayed.

Budgets are clipped at CLIP_MAX_NEW_TOKENS: a request with no max_tokens may run to the context
length, and reserving all of that for it would stall admission.
"""
from __future__ import annotations

import collections
import logging
import math
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tessera.config.engine import SchedulerConfig
    from tessera.scheduler.request import Request

logger = logging.getLogger(__name__)

CLIP_MAX_NEW_TOKENS = 4096
MIN_FINISHED = 8      # finished requests needed before the learned floor is trusted
HISTORY = 256         # finished requests the learned floor averages over
LOG_INTERVAL_S = 30.0  # how often the retraction rate is logged (when there were any)


def remaining_output(req: Request) -> int:
    """Output tokens the request may still produce (pending ones counted as produced)."""
    produced = len(req.output_ids) + req.pending_tokens
    return max(0, min(req.params.max_new_tokens - produced, req.max_total_len - req.seq_len))


def output_budget(req: Request) -> int:
    """The request's whole output budget, clipped: what its ratio of use is measured against."""
    return min(req.params.max_new_tokens, req.max_total_len - len(req.prompt_ids),
               CLIP_MAX_NEW_TOKENS)


class NewTokenRatio:
    """The fraction of their remaining output budget running requests are assumed to use."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.init = config.init_new_token_ratio
        self.min = config.min_new_token_ratio
        # from the reset value 1.0 down to the floor in decay_steps steps
        self.decay = (1.0 - self.min) / max(config.new_token_ratio_decay_steps, 1)
        self.decayed = self.init
        self.used: collections.deque[float] = collections.deque(maxlen=HISTORY)

    @property
    def floor(self) -> float:
        if len(self.used) < MIN_FINISHED:
            return self.min
        return max(self.min, sum(self.used) / len(self.used))

    @property
    def value(self) -> float:
        return min(1.0, max(self.floor, self.decayed))

    def step(self, retracted: bool) -> None:
        """After each scheduled step: decay, or back to 1.0 after a retraction."""
        self.decayed = 1.0 if retracted else max(self.min, self.decayed - self.decay)

    def finished(self, req: Request) -> None:
        """A request finished normally (stop or length): learn how much of its budget it used."""
        budget = output_budget(req)
        if budget > 0:
            self.used.append(min(1.0, len(req.output_ids) / budget))

    def reserve(self, req: Request) -> int:
        """KV slots `req` will still take beyond those it holds: one per token not yet run (the
        rest of its prompt; the last token while decoding) and its estimated further output."""
        unrun = max(0, req.seq_len - req.kv_len)
        output = min(remaining_output(req), CLIP_MAX_NEW_TOKENS)
        return unrun + math.ceil(output * self.value)


class RetractionLog:
    """Counts admissions and retractions; logs the rate at info once per LOG_INTERVAL_S when
    there were retractions in the interval."""

    def __init__(self) -> None:
        self.admitted = self.retracted = 0
        self.window_admitted = self.window_retracted = 0
        self.repeated = 0  # retractions of a request already retracted before
        self.last_log = time.monotonic()

    def admit(self) -> None:
        self.admitted += 1
        self.window_admitted += 1

    def retract(self, req: Request) -> None:
        self.retracted += 1
        self.window_retracted += 1
        if req.num_retractions > 1:
            self.repeated += 1

    def maybe_log(self, ratio: NewTokenRatio) -> None:
        now = time.monotonic()
        if now - self.last_log < LOG_INTERVAL_S:
            return
        if self.window_retracted:
            logger.info("retractions: %d in the last %.0f s over %d admissions (%.2f per 100 "
                        "requests since start, %d repeated); new-token ratio %.2f (floor %.2f)",
                        self.window_retracted, now - self.last_log, self.window_admitted,
                        100 * self.retracted / max(self.admitted, 1), self.repeated,
                        ratio.value, ratio.floor)
        self.window_admitted = self.window_retracted = 0
        self.last_log = now
