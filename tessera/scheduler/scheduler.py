"""Continuous batching with chunked prefill, prefix reuse and retraction.

Every running request needs the tokens `fill_ids[kv_len:]` run through the model: one token while
decoding, the rest of its prompt while prefilling (in chunks of at most `chunked_prefill_size`).
Each step builds one batch: unfinished prefill chunks and newly admitted requests (up to the token
budget: `chunked_prefill_size` less the decoding requests' tokens), plus every decoding request with
its one token. A batch with no prefill work is a pure
DECODE batch (what the decode CUDA graphs capture).

KV accounting invariant (checked by tests): free slots + prefix-cache slots + slots owned by running
requests == pool size.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import time
from typing import TYPE_CHECKING

import torch

from tessera.config.engine import SchedulerConfig
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.scheduler.admission import NewTokenRatio, RetractionLog, remaining_output
from tessera.scheduler.request import FinishReason, Request

if TYPE_CHECKING:
    from tessera.cache.kv_cache import KVCache
    from tessera.cache.radix import RadixCache

logger = logging.getLogger(__name__)

# prefill tokens a step may carry however many requests decode in it (see Scheduler.schedule)
MIN_PREFILL_TOKENS_PER_STEP = 64


@dataclasses.dataclass
class BatchItem:
    req: Request
    start: int     # kv_len before this step
    num_tokens: int
    # [num_tokens] int64 KV slots of the new tokens (= out_cache_loc); None for the items of a
    # batched decode, whose slots are one tensor for all of them (ScheduledBatch building)
    slots: torch.Tensor | None

    @property
    def samples(self) -> bool:
        """Whether this step produces the request's next token (its last known token is run)."""
        return self.start + self.num_tokens == self.req.seq_len


@dataclasses.dataclass
class ScheduledBatch:
    mode: ForwardMode
    items: list[BatchItem]
    forward_batch: ForwardBatch


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv_cache: KVCache, device: torch.device,
                 prefix_cache: RadixCache | None) -> None:
        if config.max_running_requests is None:
            raise ValueError("the scheduler needs max_running_requests settled (the ModelRunner "
                             "picks it from the KV pool when not given)")
        self.config = config
        self.device = device
        # rows and slots come from the KV cache; this class writes only cached prefixes into
        # req_to_token (the writer policy of tessera.cache.kv_cache)
        self.allocator = kv_cache.allocator
        self.req_pool = kv_cache.req_to_token_pool
        self.prefix_cache = prefix_cache
        self.waiting: collections.deque[Request] = collections.deque()
        self.running: list[Request] = []
        self.num_retractions = 0
        self.failed: list[Request] = []
        # the share of their remaining output budget running requests are assumed to still
        # write: admission keeps that much KV free for them (tessera.scheduler.admission)
        self.new_token_ratio = NewTokenRatio(config)
        self.retraction_log = RetractionLog()

    # ---- queue --------------------------------------------------------------------------------
    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def abort(self, rid: str) -> Request | None:
        for req in list(self.waiting):
            if req.rid == rid:
                self.waiting.remove(req)
                req.finish_reason = FinishReason.ABORT
                return req
        for req in self.running:
            if req.rid == rid:
                req.finish_reason = FinishReason.ABORT
                self.finish(req)
                return req
        return None

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    # ---- KV -----------------------------------------------------------------------------------
    def _alloc_slots(self, n: int) -> torch.Tensor | None:
        slots = self.allocator.alloc(n)
        if slots is None and self.prefix_cache is not None:
            self.prefix_cache.evict(n - self.allocator.available_size())
            slots = self.allocator.alloc(n)
        return slots

    def _own_slots(self, req: Request) -> torch.Tensor:
        return self.req_pool.read(req.req_row, req.prefix_len, req.kv_len)

    def _release_kv(self, req: Request, keep_in_cache: bool) -> None:
        """Give back the request's row and slots; cached tokens go into the prefix cache."""
        if req.req_row is None:
            return
        cache = self.prefix_cache
        if cache is not None and keep_in_cache:
            slots = self.req_pool.read(req.req_row, 0, req.kv_len)
            cache.cache_finished_request(req.fill_ids[:req.kv_len], slots, req.prefix_len,
                                         req.prefix_node)
        else:
            self.allocator.free(self._own_slots(req))
            if cache is not None and req.prefix_node is not None:
                cache.dec_lock_ref(req.prefix_node)
        self.req_pool.free(req.req_row)
        req.req_row, req.kv_len, req.prefix_len, req.prefix_node = None, 0, 0, None

    def cache_chunk(self, req: Request) -> None:
        """After a non-final prefill chunk: publish the prefix so far to the prefix cache and
        switch the request onto the cache's slots (frees any duplicates)."""
        cache = self.prefix_cache
        if cache is None or req.req_row is None or req.kv_len <= req.prefix_len:
            return
        slots = self.req_pool.read(req.req_row, 0, req.kv_len)
        match = cache.cache_unfinished_request(req.fill_ids[:req.kv_len], slots, req.prefix_len,
                                               req.prefix_node)
        self.req_pool.write(req.req_row, 0, match.slots)
        req.prefix_node, req.prefix_len = match.last_node, match.length

    def finish(self, req: Request) -> None:
        if req.finish_reason in (FinishReason.STOP, FinishReason.LENGTH):
            self.new_token_ratio.finished(req)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:  # retracted while its last token was still pending
            self.waiting.remove(req)
        self._release_kv(req, keep_in_cache=req.finish_reason is not FinishReason.ABORT)

    def retract(self, req: Request) -> None:
        """Out of KV: give the request's memory back; it re-enters the queue at the front and
        later recomputes its KV (same tokens, same per-step RNG -> the same output)."""
        self.running.remove(req)
        self._release_kv(req, keep_in_cache=True)
        req.num_retractions += 1
        self.num_retractions += 1
        self.retraction_log.retract(req)
        self.waiting.appendleft(req)
        logger.warning("KV cache full: retracted request %s after %d output tokens "
                       "(%d retractions so far)", req.rid, len(req.output_ids),
                       self.num_retractions)

    # ---- admission ----------------------------------------------------------------------------
    def _admit(self, req: Request, budget: int, headroom: int | None) -> BatchItem | None:
        """Admit `req` with a first chunk of at most `budget` tokens, if the pool has room for
        that chunk and, unless `headroom` is None (nothing else runs: a lone request only needs
        its chunk to fit), for everything the request will still take (NewTokenRatio.reserve)
        within `headroom` slots."""
        row = self.req_pool.alloc()
        if row is None:
            return None
        req.req_row = row
        cache = self.prefix_cache
        if cache is not None:
            # leave at least one token to run: its logits give the next token. Prompt
            # logprobs need every prompt token's logits: such a request reuses nothing
            wants_logits = req.params.prompt_logprobs is not None
            match = cache.match_prefix([] if wants_logits else req.fill_ids[: req.seq_len - 1])
            cache.inc_lock_ref(match.last_node)
            if match.length:
                self.req_pool.write(row, 0, match.slots)
            req.prefix_node, req.prefix_len, req.kv_len = match.last_node, match.length, match.length
        if not req.admitted_once:
            req.num_cached_tokens = min(req.prefix_len, len(req.prompt_ids))
        n = min(req.seq_len - req.kv_len, budget)
        fits = (self._free_slots() >= n if headroom is None
                else self.new_token_ratio.reserve(req) <= headroom)
        slots = self._alloc_slots(n) if fits else None
        if slots is None:
            self._release_kv(req, keep_in_cache=False)
            return None
        if not req.admitted_once:
            req.admit_time = time.monotonic()
        req.admitted_once = True
        return self._extend_item(req, n, slots)

    def _free_slots(self) -> int:
        """Slots an allocation can get: free ones and evictable prefix-cache ones."""
        free = self.allocator.available_size()
        if self.prefix_cache is not None:
            free += self.prefix_cache.evictable_size()
        return free

    def _extend_item(self, req: Request, n: int, slots: torch.Tensor) -> BatchItem:
        # req_to_token gets these slots from the forward (ModelRunner.record_slots)
        item = BatchItem(req, req.kv_len, n, slots)
        req.kv_len += n  # KV for these tokens is written by this step's forward
        return item

    def _decode_items(self, reqs: list[Request]) -> tuple[list[BatchItem], torch.Tensor] | None:
        """One token for each of `reqs` with one allocation (per-request work would dominate a
        large decode step): the items (slots None) and their slots, in order; None when the
        pool is short and the per-request path (with retraction) must decide."""
        slots = self._alloc_slots(len(reqs))
        if slots is None:
            return None
        items = []
        for req in reqs:
            items.append(BatchItem(req, req.kv_len, 1, None))
            req.kv_len += 1
        return items, slots

    def _order_waiting(self) -> None:
        if self.config.schedule_policy != "lpm" or self.prefix_cache is None:
            return
        # longest prefix match first: more reuse, less recompute
        ranked = sorted(self.waiting,
                        key=lambda r: -self.prefix_cache.match_prefix(r.fill_ids).length)
        self.waiting = collections.deque(ranked)

    # ---- one step -----------------------------------------------------------------------------
    def schedule(self) -> ScheduledBatch | None:
        chunk = self.config.chunked_prefill_size
        # requests with one token to run (neither admission nor a continuing prefill chunk can
        # change that before step 3 below)
        one_token = [r for r in self.running if r.seq_len - r.kv_len == 1]
        if chunk > 0:
            # a step's tokens stay within one chunk: the decoding requests' one token each comes
            # first, prefill takes the rest (never less than a small floor, so admission goes on
            # under a decode batch as large as the chunk). A step carrying decodes then runs no
            # longer than a chunk-sized prefill, and it fits the largest piecewise graph.
            budget = max(chunk - len(one_token), min(chunk, MIN_PREFILL_TOKENS_PER_STEP))
        else:
            budget = max(self.config.max_prefill_tokens, 1)
        prefill: list[BatchItem] = []
        # 1. requests part-way through a chunked prefill continue first
        for req in self.running:
            remaining = req.seq_len - req.kv_len
            if remaining <= 1 or budget <= 0:
                continue
            n = min(remaining, budget) if chunk > 0 else remaining
            slots = self._alloc_slots(n)
            if slots is None:
                break
            prefill.append(self._extend_item(req, n, slots))
            budget -= n
        # 2. admit waiting requests while there is budget and room: the KV free beyond what the
        # running requests will still take must hold all a new request will take
        self._order_waiting()
        headroom = None
        if self.waiting and (self.running or prefill):
            headroom = self._free_slots() - sum(map(self.new_token_ratio.reserve, self.running))
        while self.waiting and budget > 0 and len(self.running) < self.config.max_running_requests:
            req = self._next_admissible()
            if req is None:
                break
            if req.pending_tokens:
                break  # retracted with a token still on the device: admitted once it is read
            if chunk <= 0 and prefill and req.seq_len > budget:
                break  # without chunking a prompt runs whole; the next batch takes it
            item = self._admit(req, budget if chunk > 0 else req.seq_len, headroom)
            if item is None:
                break
            # what it holds now came out of the free slots; what it will still take is reserved
            headroom = (self._free_slots() if headroom is None else headroom - item.num_tokens
                        ) - self.new_token_ratio.reserve(req)
            self.waiting.remove(req)
            self.running.append(req)
            self.retraction_log.admit()
            prefill.append(item)
            budget -= item.num_tokens
        # 3. every decoding request advances by one token; retract if KV runs out
        in_prefill = {id(it.req) for it in prefill}
        decoding = [r for r in one_token if id(r) not in in_prefill and r.may_decode]
        batched = self._decode_items(decoding) if decoding else ([], None)
        decode, decode_slots = batched or ([], None)
        retractions_before = self.num_retractions
        for req in list(self.running) if batched is None else []:
            if id(req) in in_prefill or req not in self.running:
                continue
            if req.seq_len - req.kv_len != 1 or not req.may_decode:
                continue
            slots = self._alloc_slots(1)
            # never retract a request this batch already runs: its item would dangle, and its
            # kv_len already counts a token whose KV this batch has not written yet
            keep = in_prefill | {id(it.req) for it in decode} | {id(req)}
            while slots is None and self._retract_one(keep=keep):
                slots = self._alloc_slots(1)
            if slots is None:
                # nothing left to retract: this request alone cannot proceed (admission control
                # makes this unreachable for a lone request; guard against hangs anyway)
                self.retract(req)
                continue
            decode.append(self._extend_item(req, 1, slots))
        if batched is None:  # the per-request path may have retracted some it had taken
            running = set(map(id, self.running))
            decode = [it for it in decode if id(it.req) in running]
        self.new_token_ratio.step(retracted=self.num_retractions > retractions_before)
        self.retraction_log.maybe_log(self.new_token_ratio)
        items = prefill + decode
        if not items:
            return None
        mode = ForwardMode.EXTEND if prefill else ForwardMode.DECODE
        return ScheduledBatch(mode, items, self._forward_batch(mode, items, decode_slots))

    def _next_admissible(self) -> Request | None:
        """The first waiting request whose grammar (if any) is compiled: a compile in progress
        holds back only its own request. One whose compile failed is finished here (engine:
        `take_failed`)."""
        for req in list(self.waiting):
            grammar = req.grammar
            if grammar is None or req.pending_tokens:
                return req
            if not grammar.ready():
                continue
            if grammar.error is None:
                return req
            logger.error("request %s: %s", req.rid, grammar.error)
            self.waiting.remove(req)
            req.finish_reason = FinishReason.ABORT
            self.failed.append(req)
        return None

    def take_failed(self) -> list[Request]:
        """Requests finished by the scheduler itself since the last call (grammar errors)."""
        failed, self.failed = self.failed, []
        return failed

    def _retract_one(self, keep: set[int]) -> bool:
        """Retract the running request not in `keep` that loses least: the one furthest from
        finishing (most output budget left: it would hold and grow its KV longest, and what it
        has produced is kept: its tokens are prefilled again, not decoded again), on a tie the
        one holding most KV (frees most). Its KV goes to the prefix cache, so re-admission
        recomputes only what was evicted meanwhile."""
        candidates = [r for r in self.running if id(r) not in keep]
        if not candidates:
            return False
        self.retract(max(candidates, key=lambda r: (remaining_output(r), r.kv_len)))
        return True

    def _forward_batch(self, mode: ForwardMode, items: list[BatchItem],
                       tail_slots: torch.Tensor | None = None) -> ForwardBatch:
        """The batch's tensors; `tail_slots`: the slots of the trailing items whose own are None
        (a batched decode)."""
        ids: list[int] = []
        # tokens still on the device (overlap schedule): where they go, where they come from
        pending_at: list[int] = []
        pending_rows: list[int] = []
        source = None
        for it in items:
            req = it.req
            if it.num_tokens == 1 and it.start >= req.known_len:
                tokens, row = req.pending_source
                assert source is None or tokens is source, "pending tokens of one step only"
                source = tokens
                pending_at.append(len(ids))
                pending_rows.append(row)
                ids.append(0)  # placeholder, overwritten on the device
            elif it.num_tokens == 1:  # decoding: one token, without copying the whole history
                ids.append(req.token_at(it.start))
            else:
                assert it.start + it.num_tokens <= req.known_len, "prefill of unknown tokens"
                ids.extend(req.fill_ids[it.start:it.start + it.num_tokens])
        rows = [it.req.req_row for it in items]
        # the slots each item was given this step (no read-back of req_to_token per request)
        parts = [it.slots for it in items if it.slots is not None]
        if tail_slots is not None:
            parts.append(tail_slots)
        locs = parts[0] if len(parts) == 1 else torch.cat(parts)
        assert locs.shape[0] == sum(it.num_tokens for it in items), "a slot per new token"
        # prompt logprobs need the logits of every prompt token a chunk runs
        all_logits = any(it.req.params.prompt_logprobs is not None
                         and it.start < len(it.req.prompt_ids) - 1 for it in items)
        batch = ForwardBatch.build(mode, ids, rows, [it.start for it in items],
                                   [it.num_tokens for it in items], locs, self.device,
                                   return_all_logits=all_logits)
        if source is not None:
            batch.fill_input_ids(pending_at, source, pending_rows)
        return batch

    # ---- accounting ---------------------------------------------------------------------------
    def kv_tokens_in_use(self) -> int:
        return sum(r.kv_len - r.prefix_len for r in self.running)

    def check_kv_invariant(self) -> None:
        cached = self.prefix_cache.total_size() if self.prefix_cache is not None else 0
        total = self.allocator.available_size() + cached + self.kv_tokens_in_use()
        assert total == self.allocator.size, (
            f"KV slots leaked or double-freed: free {self.allocator.available_size()} + cached "
            f"{cached} + running {self.kv_tokens_in_use()} != {self.allocator.size}")
