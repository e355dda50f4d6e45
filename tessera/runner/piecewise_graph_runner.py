"""PiecewiseGraphRunner: extend/prefill batches through the piecewise-compiled backbone.

The backbone is traced once (token dimension dynamic), split at the splitting ops and, where the
platform has graphs, captured per token count in `capture_sizes` from the largest down in one
shared memory pool. A batch of n tokens is padded to the smallest captured size >= n: its ids,
positions and KV slots are copied into static buffers whose tail is zeroed (padding tokens write
their K/V to the dump slot 0), the pieces replay, attention runs eagerly between them on the real
batch metadata (it treats only the first n tokens as real and zeroes the rest of its output), and
the output is sliced back to n rows. What is compiled and captured is the model's trunk (every
token up to the last layer's attention); its `finish` (the last layer's MLP, the final norm) runs
eagerly after the pieces on each request's last token only, or on every token when the batch wants
all logits. After capture, each size's forward runs as a `ReplayPlan` (graph replays and attention
calls as one flat list, recorded once per size): no Dynamo, no split-graph code, no per-piece
lookups on the hot path. The plan's first graph (the pieces before the first attention) is launched
as soon as the inputs are copied, before the host works out the padded batch and the attention
metadata (`ReplayPlan.start`).

Whole-forward graphs. Where the attention backend can be captured for extend batches
(`AttentionSupport.extend_graph`), each size also gets one graph of the entire forward: the same compiled
pieces run back to back with the attention launches between them, captured together, reading the
batch's per-request values from static tensors of `--piecewise-cuda-graph-max-requests` + 1 request
slots (the last one is the padding request: attention zeroes its rows); its output is the final
hidden states of each slot's last token. Batches of at most that many requests (not asking for
every token's logits) replay it after one staging launch (`tessera.ops.triton.stage`); larger ones
replay the pieces. Inside one graph the kernels' programmatic dependent launches chain through
attention too, which the split breaks at every layer: H200, llama3-8b 16 tokens 4.50 -> 4.21 ms,
qwen3-0.6b 256 tokens 1.66 -> 1.38 (benchmarks/results/2026-11-24_h200_s12_full_graph_*).

Without graphs (CPU) `--enforce-piecewise-cuda-graph` runs the same padding, split and compiled
pieces without capture, so CI exercises everything but the capture itself.
"""
from __future__ import annotations

import logging
import time

import torch
import tqdm

from tessera.compilation.backend import CompiledBackbone, PiecewiseBackend
from tessera.compilation.capture_sizes import capture_sizes
from tessera.compilation.graphs import CapturedGraph, GraphMode, padded_size
from tessera.compilation.monitor import CompileMonitor
from tessera.compilation.piecewise import GraphCaptureState, ReplayPlan
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.forward.context import set_forward_context
from tessera.ops.triton.stage import stage_extend_inputs
from tessera.runner.collaborators import GraphRunnerParts

logger = logging.getLogger(__name__)

# Whole-forward graphs of at least this many tokens run the last layer's MLP on each request
# slot's last token only; smaller ones on every token, then take those rows. Up to about the
# GPU's ridge point (H200 bf16: ~200 rows) the MLP costs its weight read whatever the row count,
# and the gather before it would be one more kernel in the chain.
FINISH_LAST_TOKENS_FROM = 128


class PiecewiseGraphRunner:
    """Runs EXTEND batches of up to `max_tokens` tokens through the piecewise graph."""

    captures_logits = False  # replay gives hidden states; ModelRunner computes the logits
    records_slots = False  # ModelRunner.forward has them written (see AttentionSupport.writes_extend_slots)

    def __init__(self, parts: GraphRunnerParts) -> None:
        self.parts = parts
        self.platform = parts.platform
        self.device = parts.device
        self.attn_backend = parts.attn_backend
        # the pool every graph of the runner shares (None: compiled pieces without capture)
        self.graph_pool = parts.graph_pool if self.platform.supports_piecewise_graph else None
        self.use_graphs = self.graph_pool is not None
        self.state = GraphCaptureState(self.graph_pool)
        self.platform.apply_compile_patches()
        self.monitor = CompileMonitor("piecewise graph")
        self.backend = PiecewiseBackend(self.state, self.monitor,
                                        parts.graph.piecewise_cuda_graph_compiler)
        # the trunk: every token up to the last layer's attention; `finish` (the last layer's
        # MLP and the final norm) runs after it on the rows that get logits (LlamaModel)
        self.backbone = CompiledBackbone(parts.model, self.backend, entry="trunk")
        self.finish = parts.model.finish
        self.capture_sizes = capture_sizes(parts.graph, parts.parallel)
        self.max_tokens = self.capture_sizes[-1]
        # separate buffers: a view at a nonzero offset would make Dynamo add its offset as an input
        self.input_ids, self.positions, self.out_cache_loc = (
            torch.zeros(self.max_tokens, dtype=torch.int64, device=self.device) for _ in range(3))
        self._views: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # per captured size: one forward as a flat list of replays and attention calls, and the
        # input buffers it was recorded with (it reads them at their captured addresses)
        self.plans: dict[int, ReplayPlan] = {}
        self._plan_buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        # whole-forward graphs (see the module docstring): size -> (graph, output weak ref), and
        # the request slots their attention reads (the last slot: the padding request)
        self.max_full_requests = (parts.graph.piecewise_cuda_graph_max_requests
                                  if self.use_graphs and self.attn_backend.support.extend_graph
                                  else 0)
        self.full_graphs: dict[int, CapturedGraph] = {}
        slots = self.max_full_requests + 1
        self.request_rows = torch.zeros(slots, dtype=torch.int64, device=self.device)
        # prefix lengths | new-token counts | first tokens | last tokens (the logit rows) |
        # (seq lens: unused, zero)
        self.request_lens = torch.zeros(5, slots, dtype=torch.int32, device=self.device)
        self.replays = 0          # batches run through the pieces
        self.full_replays = 0     # batches run through a whole-forward graph
        self.eager_fallbacks = 0  # batches run eagerly because Dynamo wanted to recompile
        self.capture_seconds = 0.0
        self.capture_memory_bytes = 0
        self._trace()
        if self.use_graphs:
            self.capture()
            if self.max_full_requests:
                self.capture_full()
            else:
                logger.info("piecewise graph: no whole-forward graphs (%s)",
                            "--piecewise-cuda-graph-max-requests 0"
                            if self.attn_backend.support.extend_graph else
                            f"attention backend {self.attn_backend.name} is not capturable for "
                            f"extend batches")
        logger.info("piecewise graph: sizes %s (%s)", self.capture_sizes,
                    "captured" if self.use_graphs else "compiled pieces, no capture: no graphs "
                    f"on {self.platform.kind.value}")

    # ---- per batch ------------------------------------------------------------------------------
    def can_run(self, forward_batch: ForwardBatch) -> bool:
        """Extend batches (prefill, extend on a prefix, mixed with decoding requests) that fit."""
        return (forward_batch.mode is ForwardMode.EXTEND
                and 0 < forward_batch.num_tokens <= self.max_tokens)

    def padded_size(self, num_tokens: int) -> int:
        return padded_size(num_tokens, self.capture_sizes)

    def replay(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Final hidden states of the batch's logit rows, as ModelRunner.forward_eager returns
        them; possibly a view of graph memory, valid until the next forward (the caller computes
        logits from it at once)."""
        n = forward_batch.num_tokens
        size = self.padded_size(n)
        full = self.full_graphs.get(size)
        if (full is not None and forward_batch.batch_size <= self.max_full_requests
                and not forward_batch.return_all_logits and self._plan(size) is not None):
            return self._replay_full(forward_batch, size, full)
        buffers = (self.input_ids, self.positions, self.out_cache_loc)
        # one multi-tensor launch on a GPU instead of one copy (and one zero) per buffer
        torch._foreach_copy_([b[:n] for b in buffers], [forward_batch.input_ids,
                                                        forward_batch.positions,
                                                        forward_batch.out_cache_loc])
        if size > n:  # padding: token 0 at position 0, K/V into the dump slot 0
            torch._foreach_zero_([b[n:size] for b in buffers])
        if torch.is_inference_mode_enabled():  # ModelRunner.forward: already in it
            return self._replay_pieces(forward_batch, size)
        with torch.inference_mode():
            return self._replay_pieces(forward_batch, size)

    def _replay_pieces(self, forward_batch: ForwardBatch, size: int) -> torch.Tensor:
        stream = self._forward(forward_batch, size)
        if stream is None:  # Dynamo wanted to recompile: refused and logged by the monitor
            self.eager_fallbacks += 1
            return self.parts.forward_eager(forward_batch)
        self.replays += 1
        # the last layer's MLP after the pieces, launched eagerly (the host is ahead of the
        # device by then), on one row per request
        return self.finish(stream[:forward_batch.num_tokens], forward_batch.logit_rows())

    def _replay_full(self, forward_batch: ForwardBatch, size: int,
                     graph: CapturedGraph) -> torch.Tensor:
        b = forward_batch
        stage_extend_inputs((b.input_ids, b.positions, b.out_cache_loc),
                            (b.req_pool_indices, b.extend_prefix_lens, b.extend_seq_lens,
                             b.extend_start_loc),
                            self._static_views(size), self._request_views(),
                            self.parts.padding_req_row)
        output = graph.replay()
        self.full_replays += 1
        return output[:b.batch_size]

    def _request_views(self) -> tuple[torch.Tensor, ...]:
        return (self.request_rows, *self.request_lens[:4])

    def _full_batch(self, size: int) -> ForwardBatch:
        """The static batch a whole-forward graph of `size` tokens is captured with: the input
        buffers and the request slots, the last request the padding (ForwardBatch.pad_request);
        staged with no real token (all padding)."""
        ids, positions, loc = self._static_views(size)
        rows, (prefix, lens, starts, _, seq_lens) = self.request_rows, self.request_lens
        empty = ids[:0]
        stage_extend_inputs((empty, empty, empty), (rows[:0], prefix[:0], lens[:0], starts[:0]),
                            (ids, positions, loc), self._request_views(),
                            self.parts.padding_req_row)
        placeholder = [0] * rows.shape[0]  # host lists: unused by a pad_request batch
        return ForwardBatch(
            mode=ForwardMode.EXTEND, input_ids=ids, positions=positions, out_cache_loc=loc,
            req_pool_indices=rows, seq_lens=seq_lens, extend_prefix_lens=prefix,
            extend_seq_lens=lens, extend_start_loc=starts, seq_lens_cpu=placeholder,
            extend_prefix_lens_cpu=placeholder, extend_seq_lens_cpu=list(placeholder),
            pad_request=True)

    def _forward(self, forward_batch: ForwardBatch, size: int) -> torch.Tensor | None:
        # the first graph piece reads only the static buffers: launch it before the host works
        # out the padded batch and the attention metadata, so the device starts on the forward
        # while the host does that
        plan = self._plan(size)
        if plan is not None:
            plan.start()
        return self._run(self._padded_batch(forward_batch, size), size, plan)

    def _static_views(self, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        views = self._views.get(size)
        if views is None or not (views[0]._base is self.input_ids
                                 and views[1]._base is self.positions
                                 and views[2]._base is self.out_cache_loc):
            views = self._views[size] = (self.input_ids[:size], self.positions[:size],
                                         self.out_cache_loc[:size])
        return views

    def _padded_batch(self, forward_batch: ForwardBatch, size: int) -> ForwardBatch:
        # per-request metadata stays real: attention reads only the first sum(extend_seq_lens)
        # tokens; the padded tail exists only for the graph pieces. A shallow copy with the
        # static views (dataclasses.replace re-runs __init__ over every field: ~4x slower)
        padded = object.__new__(type(forward_batch))
        fields = padded.__dict__
        fields.update(forward_batch.__dict__)
        fields["input_ids"], fields["positions"], fields["out_cache_loc"] = (
            self._static_views(size))
        return padded

    def _plan(self, size: int) -> ReplayPlan | None:
        """The replay plan of a captured size, while the input buffers are the ones it was
        recorded with (it reads them at their captured addresses)."""
        plan = self.plans.get(size)
        if (plan is not None and self._plan_buffers is not None
                and self.input_ids is self._plan_buffers[0]
                and self.positions is self._plan_buffers[1]):
            return plan
        return None

    def _run(self, forward_batch: ForwardBatch, size: int, started: ReplayPlan | None = None,
             capture: bool = False) -> torch.Tensor | None:
        """The forward through the split backbone, or the rest of a replay plan the caller
        `start`ed; `capture`: inside a whole-forward graph's capture (the attention metadata
        through the backend's capture hook). In inference mode, as when traced (a grad-mode
        change would fail Dynamo's guards)."""
        if capture:
            self.attn_backend.init_forward_metadata_capture(forward_batch)
        else:
            self.attn_backend.init_forward_metadata(forward_batch)
        with set_forward_context(forward_batch, self.attn_backend):
            if started is not None:
                return started.finish()
            return self.backbone(forward_batch.input_ids, forward_batch.positions)

    # ---- start-up -------------------------------------------------------------------------------
    def _dummy_batch(self, size: int) -> ForwardBatch:
        """`size` new tokens of requests on the all-zero padding row: every K/V write goes to the
        dump slot 0 and every key read comes from it. Requests are cut at the context length so
        the padding row is long enough."""
        chunk = self.parts.context_length
        lens = [min(chunk, size - start) for start in range(0, size, chunk)]
        row = self.parts.padding_req_row
        batch = ForwardBatch.build(ForwardMode.EXTEND, [0] * size, [row] * len(lens),
                                   [0] * len(lens), lens, self.out_cache_loc[:size], self.device)
        for buffer in (self.input_ids, self.positions, self.out_cache_loc):
            buffer[:size].zero_()
        return self._padded_batch(batch, size)

    def _trace(self) -> None:
        """Trace and compile once, at the largest size."""
        size = self.max_tokens
        start = time.perf_counter()
        with torch.inference_mode():
            hidden = self._run(self._dummy_batch(size), size)
        if hidden is None:
            raise RuntimeError("piecewise graph: the backbone recompiled right after its trace")
        logger.info("piecewise graph: traced and compiled the backbone (%s) in %.1f s",
                    self.backend.compiler, time.perf_counter() - start)

    def _build_plans(self, sizes: list[int]) -> None:
        """Record one replayed forward per captured size as its ReplayPlan."""
        self.plans.clear()
        for size in sizes:
            batch = self._dummy_batch(size)
            plan = self.backend.build_replay_plan(
                size, lambda batch=batch, size=size: self._run(batch, size))
            if plan is None:
                logger.warning("piecewise graph: no replay plan for %d tokens (a piece did not "
                               "replay a graph); that size runs through the split graph", size)
            else:
                self.plans[size] = plan
        self._plan_buffers = (self.input_ids, self.positions)

    def capture(self) -> None:
        """Warm up and capture every size, largest first, in the shared pool."""
        state = self.state
        with self.graph_pool.capturing("piecewise graphs", self.capture_sizes,
                                       self.device) as (sizes, cost):
            for size in tqdm.tqdm(sizes, desc="Capturing piecewise graphs", unit="size"):
                batch = self._dummy_batch(size)
                # warm-up outside capture: kernels JIT-compile and autotune on first launch
                warm = self._run(batch, size)
                state.capturing = True
                try:
                    captured = self._run(batch, size)
                finally:
                    state.capturing = False
                if warm is None or captured is None:
                    raise RuntimeError(f"piecewise graph: Dynamo wanted to recompile for {size} "
                                       f"tokens during capture (see the warning above)")
            self._build_plans(sizes)
        self._add_cost(cost)
        logger.info("piecewise graph: %d sizes x %d pieces (%d graphs)", len(sizes),
                    len(self.backend.graph_pieces), state.graphs_captured)

    def capture_full(self) -> None:
        """One whole-forward graph per size, largest first, in the shared pool: the compiled
        pieces run without graphs of their own (`passthrough`) and attention launches between
        them, all captured together."""
        state = self.state
        with self.graph_pool.capturing("whole-forward graphs", self.capture_sizes,
                                       self.device) as (sizes, cost):
            state.passthrough = True
            try:
                for size in tqdm.tqdm(sizes, desc="Capturing whole-forward graphs", unit="size"):
                    batch = self._full_batch(size)
                    warm = self._run(batch, size)  # warm-up: new attention and MLP shapes
                    if warm is None:
                        raise RuntimeError(f"piecewise graph: Dynamo wanted to recompile for "
                                           f"{size} tokens (whole-forward capture)")
                    self._finish_slots(warm)
                    # the trunk, then the final hidden states of each slot's last token (the
                    # output's memory goes back to the pool at once, as a last piece's)
                    self.full_graphs[size] = self.graph_pool.capture(
                        GraphMode.FULL_EXTEND, size,
                        lambda b=batch, n=size: self._finish_slots(self._run(b, n, capture=True)),
                        weak_output=True)
            finally:
                state.passthrough = False
        self._add_cost(cost)
        logger.info("piecewise graph: whole-forward graphs serve extend batches of <= %d "
                    "requests", self.max_full_requests)

    def _add_cost(self, cost: dict[str, float]) -> None:
        self.capture_seconds += cost["seconds"]
        self.capture_memory_bytes += int(cost["bytes"])

    def _finish_slots(self, stream: torch.Tensor) -> torch.Tensor:
        """A whole-forward graph's output: the final hidden states of each request slot's last
        token (see FINISH_LAST_TOKENS_FROM)."""
        last = self.request_lens[3]
        if stream.shape[0] >= FINISH_LAST_TOKENS_FROM:
            return self.finish(stream, last)
        return self.finish(stream).index_select(0, last)
