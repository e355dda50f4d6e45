"""Decode CUDA graphs: the whole backbone forward captured once per batch size.

A uniform decode batch (one new token per request) has shapes fixed by its batch size alone, so the
backbone (embedding -> layers -> final norm) can run as one graph replay instead of hundreds of
kernel launches issued from Python. At bs=1 the launches, not the GPU, would set the step time.

How it works:
  * One static int64 buffer holds the batch inputs (positions, req_pool_indices, input_ids,
    out_cache_loc: one row each) for the largest captured size; each graph reads the leading `bs`
    columns. `replay()` copies the real batch into it (two copies: ForwardBatch.decode_inputs
    holds the first three rows as one tensor) and replays the smallest captured size >= the real
    one. The rest of the step's input preparation is captured in the graph: seq_lens =
    positions + 1, and the req_to_token entries of the new tokens (`records_slots`), so the host
    issues three operations per step before the GPU runs.
  * Padded rows (between the real and the captured batch size) look like a request of one token
    that writes its K/V to the dump slot 0 and reads it back through `padding_req_row` (a row of
    zeros): harmless to the real requests, finite, and sliced off the output.
  * Attention reads its metadata from the forward context, so the backend must be able to run a
    DECODE batch inside a capture: no allocation, no host sync, no host-side length. Backends say
    so with `AttentionSupport.decode_graph` (torch_native cannot: it loops over host lengths).
  * The LM head is part of the graph: each replay also leaves the float32 next-token logits of
    its rows in one static buffer (`logits`), so nothing but sampling runs after the replay.
  * All graphs share one memory pool (tessera.compilation.graphs.GraphPool, also used by the
    piecewise runner) and are captured largest first, so the smaller captures reuse the larger
    one's blocks.
"""
from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from tqdm import tqdm

from tessera.compilation import capture_sizes as _capture_sizes
from tessera.compilation.capture_sizes import keep_multiples, token_multiple
from tessera.compilation.graphs import CapturedGraph, GraphMode, padded_size
from tessera.config.engine import GraphConfig, ParallelConfig
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.forward.context import set_forward_context
from tessera.ops.argmax import argmax
from tessera.runner.collaborators import GraphRunnerParts

logger = logging.getLogger(__name__)

# Default capture grid: every small size is cheap to keep and decode at small batch sizes is bound
# by reading the weights, so padding up to the next size costs almost nothing; coarser above.
_SMALL_BATCH_SIZES = (1, 2, 4, 8, 12, 16, 24)
_STEP_UP_TO_256 = 8
_STEP_ABOVE_256 = 16


def decode_graph_batch_sizes(graph: GraphConfig, max_running_requests: int,
                             parallel: ParallelConfig | None = None) -> list[int]:
    """Batch sizes to capture, ascending.

    `--cuda-graph-bs` is taken as given (sorted, deduplicated); otherwise the default grid up to
    `--cuda-graph-max-bs`, plus that maximum itself so every batch up to it has a graph. Sizes
    above `max_running_requests` are dropped: the scheduler never builds such a batch.

    When the tokens are scattered over the attention-TP group (`--moe-dense-tp-size 1`, see
    tessera.compilation.capture_sizes.token_multiple) only multiples of that group's size are
    kept: of the default grid, with the maximum rounded up to one (a batch of fewer requests pads
    into it); of `--cuda-graph-bs` as given, and none left is an error.
    """
    multiple = (token_multiple(parallel)
                if parallel is not None and _capture_sizes.KEEP_SCATTER_MULTIPLES else 1)
    sizes = _batch_sizes(graph, max_running_requests, multiple)
    return keep_multiples(sizes, multiple, "decode CUDA graph batch size",
                          f"pass --cuda-graph-bs with multiples of {multiple}, or "
                          f"--disable-cuda-graph")


def _batch_sizes(graph: GraphConfig, max_running_requests: int, multiple: int) -> list[int]:
    # the largest batch the scheduler builds, padded to a multiple
    largest = -(-max_running_requests // multiple) * multiple
    if graph.cuda_graph_bs:
        bad = sorted({b for b in graph.cuda_graph_bs if b < 1})
        if bad:
            raise ValueError(f"--cuda-graph-bs takes batch sizes >= 1, got {bad}")
        sizes = sorted({b for b in graph.cuda_graph_bs if b <= largest})
        dropped = sorted({b for b in graph.cuda_graph_bs if b > largest})
        if dropped:
            logger.info("decode graphs: skipping --cuda-graph-bs %s above --max-running-requests "
                        "%d", dropped, max_running_requests)
        if not sizes:
            raise ValueError(f"no --cuda-graph-bs value is <= --max-running-requests "
                             f"{max_running_requests}; lower the batch sizes or pass "
                             f"--disable-cuda-graph")
        return sizes
    if graph.cuda_graph_max_bs < 1:
        raise ValueError(f"--cuda-graph-max-bs must be >= 1, got {graph.cuda_graph_max_bs}")
    limit = -(-min(graph.cuda_graph_max_bs, largest) // multiple) * multiple
    grid = [*_SMALL_BATCH_SIZES, *range(32, 257, _STEP_UP_TO_256),
            *range(256 + _STEP_ABOVE_256, limit + 1, _STEP_ABOVE_256)]
    sizes = [b for b in grid if b <= limit]
    if sizes[-1] != limit:
        sizes.append(limit)
    return sizes


class DecodeGraphRunner:
    """Replays whole-backbone graphs for DECODE batches of up to `max_bs` requests."""

    captures_logits = True  # a replay also computes the logits (ModelRunner.forward reads them)
    records_slots = True  # a replay also writes req_to_token (ModelRunner.record_slots)

    def __init__(self, parts: GraphRunnerParts) -> None:
        self.parts = parts
        self.platform = parts.platform
        self.attn_backend = parts.attn_backend
        self.batch_sizes = decode_graph_batch_sizes(parts.graph, parts.max_running_requests,
                                                    parts.parallel)
        self.max_bs = self.batch_sizes[-1]
        # per batch size; each graph's output: [bs, hidden] written by every replay
        self.graphs: dict[int, CapturedGraph] = {}
        self.capture_seconds = 0.0
        self.capture_memory_bytes = 0
        self.disabled_reason = self._disabled_reason()
        if self.disabled_reason is not None:
            # said once here; can_run() then answers False without repeating it every step
            logger.info("decode CUDA graphs disabled: %s", self.disabled_reason)
            return
        self._allocate_static_buffers()
        self.capture()

    def _disabled_reason(self) -> str | None:
        backend = self.attn_backend
        if not backend.support.decode_graph:
            return (f"attention backend {backend.name!r} cannot run inside a graph (it reads "
                    f"host-side lengths); use --attention-backend triton for decode graphs")
        return None

    @property
    def enabled(self) -> bool:
        return self.disabled_reason is None

    # ---- static inputs -------------------------------------------------------------------------
    def _allocate_static_buffers(self) -> None:
        n, device = self.max_bs, self.parts.device
        self.padding_req_row = self.parts.padding_req_row
        # rows: positions, req_pool_indices, input_ids, out_cache_loc (decode_inputs' order, then
        # the slots); padding is token 0 at position 0 of the padding row, writing dump slot 0
        self._inputs = torch.zeros((4, n), dtype=torch.int64, device=device)
        self.positions, self.req_pool_indices, self.input_ids, self.out_cache_loc = (
            self._inputs.unbind(0))
        self.req_pool_indices.fill_(self.padding_req_row)
        # written by the graph itself from positions (a decode token's seq_len is position + 1)
        self.seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        # next-token logits of every row, written by each replay (one buffer for all sizes)
        self.logits = torch.empty((n, self.parts.vocab_size),
                                  dtype=torch.float32, device=device)
        # argmax of each row's logits, also written by each replay: a greedy batch's tokens
        # without a sampling launch after the graph (Sampler.sample(greedy_tokens=...))
        self.greedy_tokens = torch.zeros(n, dtype=torch.int64, device=device)
        # Extend fields of a decode batch are constants (one new token per request); kept so the
        # static batch is a complete ForwardBatch. Decode backends read only the five above.
        self._extend_seq_lens = torch.ones(n, dtype=torch.int32, device=device)
        self._extend_prefix_lens = torch.zeros(n, dtype=torch.int32, device=device)
        self._extend_start_loc = torch.arange(n, dtype=torch.int32, device=device)
        # columns [_real_rows:] hold padding values; replay() keeps that true
        self._real_rows = 0

    def _static_batch(self, bs: int) -> ForwardBatch:
        """The batch a graph of size `bs` is captured with: views of the static buffers.

        Its host-side lists are placeholders (graph-safe backends never read them in DECODE)."""
        ones = [1] * bs
        return ForwardBatch(
            mode=ForwardMode.DECODE, input_ids=self.input_ids[:bs],
            positions=self.positions[:bs], out_cache_loc=self.out_cache_loc[:bs],
            req_pool_indices=self.req_pool_indices[:bs], seq_lens=self.seq_lens[:bs],
            extend_prefix_lens=self._extend_prefix_lens[:bs],
            extend_seq_lens=self._extend_seq_lens[:bs],
            extend_start_loc=self._extend_start_loc[:bs],
            seq_lens_cpu=ones, extend_prefix_lens_cpu=[0] * bs, extend_seq_lens_cpu=ones)

    def _fill_padding(self, start: int, end: int) -> None:
        self._inputs[:, start:end].zero_()
        self.req_pool_indices[start:end].fill_(self.padding_req_row)
        self.seq_lens[start:end].fill_(1)  # what a graph of this size would compute for them

    def _load_inputs(self, forward_batch: ForwardBatch) -> None:
        bs = forward_batch.batch_size
        if self._real_rows > bs:
            # a larger batch left real rows behind: make them padding again (only when the batch
            # shrinks, so steady decoding pays nothing for padding)
            self._fill_padding(bs, self._real_rows)
        self._real_rows = bs
        # device-to-device copies into fixed addresses; no sync, no allocation
        if forward_batch.decode_inputs is not None:
            self._inputs[:3, :bs].copy_(forward_batch.decode_inputs)
        else:
            self.positions[:bs].copy_(forward_batch.positions)
            self.req_pool_indices[:bs].copy_(forward_batch.req_pool_indices)
            self.input_ids[:bs].copy_(forward_batch.input_ids)
        self.out_cache_loc[:bs].copy_(forward_batch.out_cache_loc)

    # ---- capture -------------------------------------------------------------------------------
    def _forward_fn(self, bs: int) -> Callable[[], torch.Tensor]:
        batch = self._static_batch(bs)
        model, backend, record_slots = self.parts.model, self.attn_backend, self.parts.record_slots

        def forward() -> torch.Tensor:
            # the step's input preparation, on the device: seq_lens, and the new tokens' slots
            # in req_to_token (padding rows write slot 0 at position 0 of the all-zero padding
            # row: it stays all zeros)
            batch.seq_lens.copy_(batch.positions + 1)
            record_slots(batch)
            # metadata depends only on the batch shape for graph-safe backends: computing it here
            # (at capture time) is all they need
            backend.init_forward_metadata_capture(batch)
            with set_forward_context(batch, backend):
                hidden = model(batch.input_ids, batch.positions)
            # the LM head, and the float32 cast fused into the copy to the static buffer
            self.logits[:bs].copy_(model.compute_logits(hidden))
            argmax(self.logits[:bs], out=self.greedy_tokens[:bs])
            return hidden

        return forward

    def capture(self) -> None:
        pool = self.parts.graph_pool
        with pool.capturing("decode graphs", self.batch_sizes, self.parts.device) as (sizes, cost):
            for bs in tqdm(sizes, desc="capturing decode graphs", unit="graph"):
                forward = self._forward_fn(bs)
                # eager warm-up: Triton compiles each kernel variant on its first launch, which
                # must not happen inside a capture
                forward()
                self.graphs[bs] = pool.capture(GraphMode.DECODE, bs, forward)
        self.capture_seconds, self.capture_memory_bytes = cost["seconds"], int(cost["bytes"])

    # ---- replay --------------------------------------------------------------------------------
    def can_run(self, forward_batch: ForwardBatch) -> bool:
        return (self.disabled_reason is None and forward_batch.mode is ForwardMode.DECODE
                and forward_batch.batch_size <= self.max_bs)

    def replay(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Hidden states [bs, hidden] of the real rows; their logits are in `self.logits[:bs]`.

        Both are views of the graphs' static buffers: the next replay overwrites them, so use
        them (sample) before replaying again."""
        bs = forward_batch.batch_size
        graph = self.graphs[padded_size(bs, self.batch_sizes)]
        self._load_inputs(forward_batch)
        return graph.replay()[:bs]
