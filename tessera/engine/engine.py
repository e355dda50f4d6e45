"""Engine: scheduler + model runner + sampler + detokenizer, advanced one step at a time.

The offline `LLM` drives it in-process; the server runs it in its own process behind ZMQ.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import time
from typing import Any

import torch

from tessera.config.engine import EngineConfig
from tessera.engine.detokenizer import IncrementalDetokenizer
from tessera.engine.generation_config import load_generation_config
from tessera.engine.profiler import StepProfiler, profile_dir
from tessera.engine.prompt_logprobs import collect_prompt_logprobs
from tessera.engine.tp import LocalRanks, start_rank_zero
from tessera.models.tokenizer import load_tokenizer
from tessera.platforms.transfer import to_host_async
from tessera.runner.model_runner import ModelRunner
from tessera.sampling.params import THINK_END, SamplingParams
from tessera.sampling.sampler import Sampler, SamplingBatchInfo
from tessera.scheduler.grammar import create_grammar_backend, think_end_token_id
from tessera.scheduler.request import FinishReason, Request
from tessera.scheduler.scheduler import ScheduledBatch, Scheduler

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class StepOutput:
    """What one step produced for one request (a streaming delta)."""
    rid: str
    new_token_ids: list[int]
    new_text: str
    finished: bool
    finish_reason: str | None
    num_prompt_tokens: int
    num_output_tokens: int
    num_cached_tokens: int
    new_logprobs: list[float] = dataclasses.field(default_factory=list)
    new_top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    stop_str: str | None = None
    # prompt logprobs (SamplingParams.prompt_logprobs), on the request's first output: one
    # (logprob, [(id, logprob) alternatives]) per prompt token after the first
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None
    # seconds from arrival to first admission, on the request's first token
    queue_time: float | None = None


@dataclasses.dataclass
class _InFlight:
    """A launched step's sampled tokens, on their way to the host."""
    reqs: list[Request]               # the requests that sampled, in row order
    tokens: torch.Tensor              # [n] int64 on the host (filled when `event` completes)
    logprobs: torch.Tensor | None
    top_logprobs: tuple[torch.Tensor, torch.Tensor] | None
    event: Any                        # recorded after the copies; None on the CPU


@dataclasses.dataclass
class _Forwarded:
    """A launched forward whose next tokens are not sampled yet."""
    reqs: list[Request]               # the requests that sample, in row order
    logits: torch.Tensor              # [len(reqs), vocab]
    greedy: torch.Tensor | None       # the model's own argmax rows, where it gives them
    needs_history: bool               # some request samples from its output history


_NO_RANGE = contextlib.nullcontext()


def _batch_range_name(batch: ScheduledBatch) -> str:
    """A forward's profiler range: its mode, requests and new tokens (e.g. `forward extend
    reqs=12 tokens=2048`), so a trace shows which batches the step time went to."""
    tokens = sum(it.num_tokens for it in batch.items)
    return f"forward {batch.mode.name.lower()} reqs={len(batch.items)} tokens={tokens}"


def _uses_history(req: Request) -> bool:
    """Penalties and grammars read the output so far: such a request's sampling waits for its
    last token (its forward does not)."""
    params = req.params
    return (req.grammar is not None or params.repetition_penalty != 1.0
            or params.frequency_penalty != 0.0 or params.presence_penalty != 0.0)


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config = config.resolve()
        # tp > 1: this process is rank 0; the node's other ranks run tessera.runner.tp_worker
        self.tp_ranks: LocalRanks | None = None
        self.runner: ModelRunner | None = None
        try:
            if config.parallel.tp_size > 1:
                if config.parallel.node_rank != 0:
                    raise ValueError(f"--node-rank {config.parallel.node_rank}: only node 0 "
                                     f"runs the engine (other nodes start their ranks with "
                                     f"`tessera serve --node-rank k`)")
                self.tp_ranks = start_rank_zero(config)
            self.runner = ModelRunner(config)
        except BaseException:
            self.shutdown()
            raise
        # the runner settles what was left to it (max_running_requests from the KV pool)
        self.config = config = self.runner.config
        mc = self.runner.model_config
        tok_path = config.load.tokenizer_path or config.load.model_path
        self.generation_defaults = load_generation_config(config.load.model_path)
        self.tokenizer = load_tokenizer(tok_path, mc.vocab_size, (
            *mc.eos_token_ids, *self.generation_defaults.eos_token_ids))
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids)
        # where a require_reasoning request's constraint starts; None: such requests are refused
        self.think_end_id = think_end_token_id(self.tokenizer)
        self.prefix_cache = None
        if not config.cache.disable_radix_cache:
            from tessera.cache.radix import RadixCache

            self.prefix_cache = RadixCache(self.runner.kv_cache.allocator)
        else:
            logger.info("radix prefix cache disabled by --disable-radix-cache")
        self.scheduler = Scheduler(config.scheduler, self.runner.kv_cache, self.runner.device,
                                   self.prefix_cache)
        self.profiler = StepProfiler(profile_dir(config.server.profile_dir),
                                     self.runner.device.type)
        self.sampler = Sampler(backend=config.backend.sampling_backend)
        self.grammar_backend = None
        try:
            self.grammar_backend = create_grammar_backend(
                config.backend.grammar_backend, self.tokenizer, mc.vocab_size,
                self.eos_token_ids)
        except Exception as e:  # a tokenizer xgrammar cannot read (any error of its own)
            if isinstance(e, ValueError) and "pip install" in str(e):
                raise  # a missing package is a setup error the user must see at once
            logger.error("structured output is off: the grammar backend could not read this "
                         "tokenizer (%s: %s); constrained requests will be refused",
                         type(e).__name__, e)
        self.requests: dict[str, Request] = {}
        self._rng = random.Random(config.load.seed)
        self._next_rid = 0
        self.context_length = self.runner.context_length
        self.vocab_size = mc.vocab_size
        self.num_prompt_tokens_total = 0
        self.num_generated_tokens_total = 0
        self.num_cached_tokens_total = 0
        self._pending_finished: list[Request] = []
        self.overlap = not config.scheduler.disable_overlap_schedule
        self._in_flight: _InFlight | None = None  # launched, tokens not read yet (overlap)
        logger.info("overlap schedule %s", "on: the next step is launched before the last one's "
                    "tokens are read" if self.overlap else "off (--disable-overlap-schedule)")

    # ---- requests -----------------------------------------------------------------------------
    def new_rid(self) -> str:
        self._next_rid += 1
        return f"req-{self._next_rid}"

    def validate_prompt(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Reject what can never run, with a message that says what to change."""
        if not prompt_ids:
            raise ValueError("prompt is empty: give at least one token")
        bad = [t for t in prompt_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"prompt token ids out of range [0, {self.vocab_size}): {bad[:5]}")
        if len(prompt_ids) >= self.context_length:
            raise ValueError(f"prompt has {len(prompt_ids)} tokens but the context length is "
                             f"{self.context_length}; shorten the prompt")
        bad = [t for t in params.logit_bias or () if t >= self.vocab_size]
        if bad:
            raise ValueError(f"logit_bias has token ids outside the vocabulary [0, "
                             f"{self.vocab_size}): {bad[:5]}")
        bad = [t for t in params.stop_token_ids if t >= self.vocab_size]
        if bad:
            raise ValueError(f"stop_token_ids outside the vocabulary [0, {self.vocab_size}): "
                             f"{bad[:5]}")
        if params.grammar is not None and self.grammar_backend is None:
            raise ValueError(f"{params.grammar[0]}: structured output is off on this server "
                             "(started with --grammar-backend none)")
        if params.require_reasoning and self.think_end_id is None:
            raise ValueError(f"require_reasoning: this model's tokenizer does not encode "
                             f"{THINK_END} as one token, so the constraint cannot start after "
                             f"the reasoning; leave require_reasoning off")
        need = min(len(prompt_ids) + params.max_new_tokens, self.context_length)
        if need > self.runner.kv_cache_tokens:
            raise ValueError(f"request needs up to {need} KV tokens (prompt {len(prompt_ids)} + "
                             f"max_new_tokens {params.max_new_tokens}) but the KV pool holds "
                             f"{self.runner.kv_cache_tokens}; lower max_new_tokens")

    def add_request(self, prompt_ids: list[int], params: SamplingParams,
                    rid: str | None = None) -> str:
        self.validate_prompt(prompt_ids, params)
        rid = rid or self.new_rid()
        if rid in self.requests:
            raise ValueError(f"duplicate request id {rid!r}")
        seed = params.seed if params.seed is not None else self._rng.getrandbits(63)
        req = Request(rid=rid, prompt_ids=list(prompt_ids), params=params, seed=seed,
                      eos_token_ids=self.eos_token_ids, max_total_len=self.context_length,
                      arrival=time.monotonic())
        req.detokenizer = IncrementalDetokenizer(self.tokenizer, params.stop,
                                                 params.skip_special_tokens)
        if params.grammar is not None and self.grammar_backend is not None:
            req.grammar = self.grammar_backend.request_grammar(
                *params.grammar, self.think_end_id if params.require_reasoning else None)
        self.requests[rid] = req
        self.num_prompt_tokens_total += len(prompt_ids)
        if params.max_new_tokens == 0 and params.prompt_logprobs is None:
            req.finish_reason = FinishReason.LENGTH
            self._pending_finished.append(req)
        else:
            self.scheduler.add(req)
        return rid

    def abort(self, rid: str) -> bool:
        req = self.requests.get(rid)
        if req is None or req.finished:
            return False
        self.scheduler.abort(rid)
        req.finish_reason = FinishReason.ABORT
        self._pending_finished.append(req)
        return True

    def has_unfinished(self) -> bool:
        return (self.scheduler.has_work() or bool(self._pending_finished)
                or self._in_flight is not None)

    # ---- one step -----------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        """One engine step (`_step`). With tp > 1 a failed step (another rank died, a collective
        timed out) stops every rank and raises a RuntimeError that names the rank that exited."""
        if self.profiler.active:
            with torch.profiler.record_function("engine_step"):
                outputs = self._step_guarded()
            self.profiler.step_done()
            return outputs
        return self._step_guarded()

    def _range(self, name: str) -> Any:
        """A named profiler range while a profile runs (the parts of `_step`), else nothing."""
        return torch.profiler.record_function(name) if self.profiler.active else _NO_RANGE

    def _step_guarded(self) -> list[StepOutput]:
        if self.tp_ranks is None:
            return self._step()
        try:
            return self._step()
        except Exception as e:
            ranks = self.tp_ranks
            ranks.wait(timeout=1.0)  # a killed rank is reaped in moments; name it if it is
            failure = ranks.failure()
            self.shutdown()
            raise RuntimeError(f"tensor-parallel step failed: {failure or e}; every rank was "
                               f"stopped") from e

    def _step(self) -> list[StepOutput]:
        """Run one batch and return what it (or, with the overlap schedule, the batch before it)
        produced.

        Overlap schedule (default; `--disable-overlap-schedule` turns it off): the next batch is
        scheduled and launched BEFORE the previous one's sampled tokens are read, so the host's
        work for a step (scheduling, building the batch, launching) runs while the device still
        computes the step before. A decoding request's next input is its pending token, taken on
        the device (`Scheduler._forward_batch`). Finish checks (EOS, stop strings) then run one
        step late: a request that finished still ran one more step, whose token is dropped.
        Length limits are known ahead and never cost the extra step. A batch whose sampling needs
        the exact output history (penalties, grammars) is forwarded first too; the step before is
        read while that forward runs (grammars accept its tokens, then fill this step's masks),
        and only then is the batch sampled.
        """
        self._pending_finished += self.scheduler.take_failed()
        outputs = [self._output(req, [], [], []) for req in self._pending_finished]
        self._pending_finished = []
        previous = self._in_flight
        self._in_flight = None
        if previous is not None and not self.overlap:
            with self._range("process"):
                outputs += self._process(previous)
            previous = None
        with self._range("schedule"):
            batch = self.scheduler.schedule()
        forwarded = None
        if batch is not None:
            with self._range(_batch_range_name(batch)):
                forwarded = self._forward(batch)
        launched = None
        if forwarded is not None and not forwarded.needs_history:
            with self._range("sample"):
                launched, forwarded = self._sample(forwarded), None
        if previous is not None:
            with self._range("process"):
                outputs += self._process(previous)
        if forwarded is not None:
            with self._range("sample"):
                launched = self._sample(forwarded)
        if launched is not None:
            if self.overlap:
                self._in_flight = launched
            else:
                with self._range("process"):
                    outputs += self._process(launched)
        return outputs

    def _forward(self, batch: ScheduledBatch) -> _Forwarded | None:
        """Launch `batch`'s forward; None when no request samples in it (prefill chunks only)."""
        out = self.runner.forward(batch.forward_batch)
        logits, greedy = out.next_token_logits, out.greedy_tokens
        if out.all_logits is not None:
            collect_prompt_logprobs(batch.items, out.all_logits)
        sampling_items = [(i, it) for i, it in enumerate(batch.items) if it.samples]
        for it in batch.items:
            if not it.samples:
                self.scheduler.cache_chunk(it.req)
        if not sampling_items:
            return None
        reqs = [it.req for _, it in sampling_items]
        rows = [i for i, _ in sampling_items]
        if len(rows) != logits.shape[0]:
            logits = logits[rows]
            greedy = greedy[rows] if greedy is not None else None
        return _Forwarded(reqs, logits, greedy, any(_uses_history(r) for r in reqs))

    def _sample(self, fwd: _Forwarded) -> _InFlight:
        """Sample a forwarded batch; the tokens are copied to the host without waiting."""
        reqs, logits = fwd.reqs, fwd.logits
        with self._range("sampling info"):
            info = SamplingBatchInfo.build(
                params=[r.params for r in reqs], seeds=[r.seed for r in reqs],
                step_ids=[len(r.output_ids) + r.pending_tokens for r in reqs],
                output_ids=[r.output_ids for r in reqs] if fwd.needs_history else None,
                prompt_ids=[r.prompt_ids for r in reqs] if fwd.needs_history else None,
                vocab_size=logits.shape[-1], device=logits.device,
                eos_token_ids=sorted(self.eos_token_ids))
        with self._range("grammar mask"):
            info.token_bitmask = self._grammar_bitmask(reqs, logits.device)
        with self._range("sampler"):
            result = self.sampler.sample(logits, info, greedy_tokens=fwd.greedy)
        for j, req in enumerate(reqs):
            req.pending_tokens += 1
            req.pending_source = (result.token_ids, j)
        top = result.top_logprobs or (None, None)
        (tokens, logprobs, top_vals, top_ids), copied = to_host_async(
            self.runner.platform, result.token_ids, result.logprobs, *top)
        return _InFlight(reqs, tokens, logprobs,
                         None if result.top_logprobs is None else (top_vals, top_ids), copied)

    def _grammar_bitmask(self, reqs: list[Request], device: torch.device) -> torch.Tensor | None:
        """The batch's token bitmask when some request follows a grammar (None otherwise).

        Filled on the host after the forward was launched, so the matchers' work overlaps the
        device's; each grammar request already accepted its last token (`_step` read the step
        before first). A request still reasoning keeps its row all-ones, and so does one that
        finished meanwhile (its token is dropped)."""
        rows = [(j, r.grammar) for j, r in enumerate(reqs)
                if r.grammar is not None and not r.grammar.reasoning and not r.finished]
        if not rows or self.grammar_backend is None:
            return None
        bitmask = self.grammar_backend.batch_bitmask(len(reqs), [j for j, _ in rows],
                                                     [g for _, g in rows],
                                                     pin=device.type != "cpu")
        return bitmask.to(device, non_blocking=True)

    def _process(self, step: _InFlight) -> list[StepOutput]:
        """Read a launched step's tokens (the step's one wait for the device) and advance its
        requests: append, check finish, stream."""
        if step.event is not None:
            step.event.synchronize()
        tokens = step.tokens.tolist()
        logprobs = step.logprobs.tolist() if step.logprobs is not None else None
        top = None
        if step.top_logprobs is not None:
            vals, ids = step.top_logprobs
            top = (vals.tolist(), ids.tolist())
        now = time.monotonic()
        outputs = []
        for j, (req, tok) in enumerate(zip(step.reqs, tokens)):
            req.pending_tokens -= 1
            if req.pending_tokens == 0:
                req.pending_source = None
            if req.finished:  # stopped (or aborted) while this step ran: its token is dropped
                continue
            if req.params.max_new_tokens == 0:  # ran for its prompt logprobs only
                req.finish_reason = FinishReason.LENGTH
                outputs.append(self._output(req, [], [], []))
                self.scheduler.finish(req)
                continue
            req.output_ids.append(tok)
            self.num_generated_tokens_total += 1
            queue_time = None
            if req.first_token_time is None:
                req.first_token_time = now
                self.num_cached_tokens_total += req.num_cached_tokens
                if req.admit_time is not None:
                    queue_time = req.admit_time - req.arrival
            new_lp = [logprobs[j]] if logprobs is not None and req.params.logprobs else []
            new_top: list[list[tuple[int, float]]] = []
            if top is not None and req.params.top_logprobs:
                n = req.params.top_logprobs
                new_top = [list(zip(top[1][j][:n], top[0][j][:n]))]
            req.check_finish(tok)
            if req.grammar is not None and not req.finished:
                self._advance_grammar(req, tok)
            outputs.append(self._output(req, [tok], new_lp, new_top))
            outputs[-1].queue_time = queue_time
            if req.finished:
                self.scheduler.finish(req)
        return outputs

    @staticmethod
    def _advance_grammar(req: Request, token: int) -> None:
        """Feed the grammar its request's new token; a complete grammar ends the request."""
        if not req.grammar.accept(token):
            # only a token the mask forbade gets here (a row with every token masked)
            logger.error("request %s: token %d breaks its grammar; stopping it", req.rid, token)
            req.finish_reason = FinishReason.STOP
        elif req.grammar.terminated:
            req.finish_reason = FinishReason.STOP

    def _output(self, req: Request, new_ids: list[int], new_lp: list[float],
                new_top: list[list[tuple[int, float]]]) -> StepOutput:
        text = req.detokenizer.add(new_ids) if new_ids else ""
        if req.detokenizer.stopped and not req.finished:
            req.finish_reason = FinishReason.STOP
            req.stop_str = req.detokenizer.stop_reason
            self.scheduler.finish(req)
        if req.finished:
            text += req.detokenizer.flush()
            self.requests.pop(req.rid, None)
        prompt_lps = None
        if req.params.prompt_logprobs is not None and not req.prompt_logprobs_sent:
            req.prompt_logprobs_sent = True
            prompt_lps = req.prompt_logprobs
        return StepOutput(rid=req.rid, new_token_ids=new_ids, new_text=text,
                          finished=req.finished,
                          finish_reason=req.finish_reason.value if req.finished else None,
                          num_prompt_tokens=len(req.prompt_ids),
                          num_output_tokens=len(req.output_ids),
                          num_cached_tokens=req.num_cached_tokens,
                          new_logprobs=new_lp, new_top_logprobs=new_top, stop_str=req.stop_str,
                          prompt_logprobs=prompt_lps)

    # ---- tensor-parallel ranks ----------------------------------------------------------------
    def check_ranks(self) -> None:
        """Raises when one of the other TP ranks has exited (the engine cannot step any more)."""
        if self.tp_ranks is not None:
            failure = self.tp_ranks.failure()
            if failure is not None:
                raise RuntimeError(failure)

    def shutdown(self) -> None:
        """Stop the other TP ranks (a stop plan, then a kill after 10 s) and leave the world.
        A no-op at tp 1; safe to call twice."""
        if self.tp_ranks is None:
            return
        from tessera.distributed import destroy_distributed

        ranks, self.tp_ranks = self.tp_ranks, None
        if self.runner is not None and ranks.failure() is None:
            try:
                self.runner.stop_other_ranks()
            except Exception as e:  # noqa: BLE001 - a dead rank: kill the rest below
                logger.warning("could not send the stop plan: %s", e)
        ranks.stop(timeout=10.0)
        destroy_distributed()

    # ---- maintenance --------------------------------------------------------------------------
    def flush_cache(self) -> bool:
        """Empty the prefix cache; only when nothing is running (returns False otherwise)."""
        if self.scheduler.has_work() or self._in_flight is not None:
            return False
        if self.prefix_cache is not None:
            self.prefix_cache.reset()
        return True

    def stats(self) -> dict[str, float]:
        alloc = self.runner.kv_cache.allocator
        cached = self.prefix_cache.total_size() if self.prefix_cache is not None else 0
        return {
            "num_running_reqs": len(self.scheduler.running),
            "num_queued_reqs": len(self.scheduler.waiting),
            "kv_pool_size": alloc.size,
            "kv_free_tokens": alloc.available_size(),
            "kv_cached_tokens": cached,
            "kv_used_tokens": alloc.size - alloc.available_size() - cached,
            "prompt_tokens_total": self.num_prompt_tokens_total,
            "generation_tokens_total": self.num_generated_tokens_total,
            "cached_tokens_total": self.num_cached_tokens_total,
            "num_retractions": self.scheduler.num_retractions,
        }
