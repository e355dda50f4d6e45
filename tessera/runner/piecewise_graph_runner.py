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

import bisect
import contextlib
import gc
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING
from unittest import mock

import torch
import tqdm

from tessera.forward.context import set_forward_context
from tessera.compilation.backend import CompiledBackbone, PiecewiseBackend
from tessera.compilation.capture_sizes import capture_sizes
from tessera.compilation.monitor import CompileMonitor
from tessera.compilation.piecewise import GraphCaptureState, ReplayPlan
from tessera.compilation.weak_ref import weak_ref_tensors
from tessera.ops.triton.stage import stage_extend_inputs
from tessera.forward.batch import ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from tessera.runner.model_runner import ModelRunner

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

    def __init__(self, model_runner: ModelRunner) -> None:
        self.model_runner = model_runner
        self.platform = model_runner.platform
        self.device = model_runner.device
        self.attn_backend = model_runner.attn_backend
        config = model_runner.config
        self.use_graphs = self.platform.supports_piecewise_graph
        self.state = GraphCaptureState(self.platform, self.use_graphs)
        if self.use_graphs:
            # one pool for every graph of this process (the decode graph runner may have made it)
            if getattr(model_runner, "graph_pool", None) is None:
                model_runner.graph_pool = self.platform.graph_pool_handle()
            self.state.pool = model_runner.graph_pool
            self.state.stream = self.platform.new_stream()
        self.platform.apply_compile_patches()
        self.monitor = CompileMonitor("piecewise graph")
        self.backend = PiecewiseBackend(self.state, self.monitor,
                                        config.graph.piecewise_cuda_graph_compiler)
        # the trunk: every token up to the last layer's attention; `finish` (the last layer's
        # MLP and the final norm) runs after it on the rows that get logits (LlamaModel)
        self.backbone = CompiledBackbone(model_runner.model, self.backend, entry="trunk")
        self.finish = model_runner.model.finish
        self.capture_sizes = capture_sizes(config.graph, config.parallel)
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
        self.max_full_requests = (config.graph.piecewise_cuda_graph_max_requests
                                  if self.use_graphs and self.attn_backend.support.extend_graph
                                  else 0)
        self.full_graphs: dict[int, tuple[object, torch.Tensor]] = {}
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
        return self.capture_sizes[bisect.bisect_left(self.capture_sizes, num_tokens)]

    def replay(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Final hidden states of the batch's logit rows, as ModelRunner.forward_eager returns
        them; possibly a view of graph memory, valid until the next forward (the caller computes
        logits from it at once)."""
        n = forward_batch.num_tokens
        size = self.padded_size(n)
        full = self.full_graphs.get(size)
        if (full is not None and forward_batch.batch_size <= self.max_full_requests
                and not forward_batch.return_all_logits and self._plan(size) is not None):
            return self._replay_full(forward_batch, size, *full)
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
            return self.model_runner.forward_eager(forward_batch)
        self.replays += 1
        # the last layer's MLP after the pieces, launched eagerly (the host is ahead of the
        # device by then), on one row per request
        return self.finish(stream[:forward_batch.num_tokens], forward_batch.logit_rows())

    def _replay_full(self, forward_batch: ForwardBatch, size: int, graph: object,
                     output: torch.Tensor) -> torch.Tensor:
        b = forward_batch
        stage_extend_inputs((b.input_ids, b.positions, b.out_cache_loc),
                            (b.req_pool_indices, b.extend_prefix_lens, b.extend_seq_lens,
                             b.extend_start_loc),
                            self._static_views(size), self._request_views(),
                            self.model_runner.padding_req_row)
        graph.replay()
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
                            self.model_runner.padding_req_row)
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
        chunk = self.model_runner.context_length
        lens = [min(chunk, size - start) for start in range(0, size, chunk)]
        row = self.model_runner.padding_req_row
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
        with self._capturing() as (sizes, cost):
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
        logger.info("piecewise graph: captured %d sizes x %d pieces (%d graphs) in %.1f s using "
                    "%.2f GiB", len(sizes), len(self.backend.graph_pieces),
                    state.graphs_captured, cost["seconds"], cost["bytes"] / (1 << 30))

    def capture_full(self) -> None:
        """One whole-forward graph per size, largest first, in the shared pool: the compiled
        pieces run without graphs of their own (`passthrough`) and attention launches between
        them, all captured together."""
        platform, state = self.platform, self.state
        with self._capturing() as (sizes, cost):
            state.passthrough = True
            try:
                for size in tqdm.tqdm(sizes, desc="Capturing whole-forward graphs", unit="size"):
                    batch = self._full_batch(size)
                    warm = self._run(batch, size)  # warm-up: new attention and MLP shapes
                    if warm is None:
                        raise RuntimeError(f"piecewise graph: Dynamo wanted to recompile for "
                                           f"{size} tokens (whole-forward capture)")
                    self._finish_slots(warm)
                    graph = platform.graph_class()()
                    with platform.graph_context(graph, pool=state.pool, stream=state.stream):
                        # the trunk, then the final hidden states of each slot's last token
                        # (the output's memory goes back to the pool at once, as a last piece's)
                        output = weak_ref_tensors(self._finish_slots(
                            self._run(batch, size, capture=True)))
                    self.full_graphs[size] = (graph, output)
            finally:
                state.passthrough = False
        logger.info("piecewise graph: captured %d whole-forward graphs (extend batches of <= %d "
                    "requests) in %.1f s using %.2f GiB", len(sizes), self.max_full_requests,
                    cost["seconds"], cost["bytes"] / (1 << 30))

    def _finish_slots(self, stream: torch.Tensor) -> torch.Tensor:
        """A whole-forward graph's output: the final hidden states of each request slot's last
        token (see FINISH_LAST_TOKENS_FROM)."""
        last = self.request_lens[3]
        if stream.shape[0] >= FINISH_LAST_TOKENS_FROM:
            return self.finish(stream, last)
        return self.finish(stream).index_select(0, last)

    @contextlib.contextmanager
    def _capturing(self) -> Iterator[tuple[list[int], dict[str, float]]]:
        """The setting of a capture pass: yields the sizes, largest first, with the quiet capture
        patches, the capture stream and inference mode on; afterwards fills the pass's wall time
        and the device memory its graphs hold into the yielded dict and adds them to
        capture_seconds / capture_memory_bytes."""
        platform = self.platform
        platform.synchronize()
        platform.empty_cache()  # eager activations before the pass are not the graphs' memory
        free_before = platform.mem_get_info()[0]
        start = time.perf_counter()
        cost: dict[str, float] = {}
        with (_quiet_capture(self.device), platform.stream_context(self.state.stream),
              torch.inference_mode()):
            yield sorted(self.capture_sizes, reverse=True), cost
        platform.synchronize()
        cost["seconds"] = time.perf_counter() - start
        # what the graphs hold, not what the eager warm-ups left in the allocator's cache
        platform.empty_cache()
        cost["bytes"] = free_before - platform.mem_get_info()[0]
        self.capture_seconds += cost["seconds"]
        self.capture_memory_bytes += int(cost["bytes"])


@contextlib.contextmanager
def _quiet_capture(device: torch.device) -> Iterator[None]:
    """Capturing ~1000 graphs: skip the per-capture cache flush and full garbage collection.

    Each capture context empties the allocator cache (a synchronising cudaFree of every cached
    block, which the eager attention between pieces then allocates again) and may run gc.collect().
    Collect once, freeze the survivors so any later collection is cheap, and empty the cache once.
    """
    gc.collect()
    gc.freeze()
    module = torch.get_device_module(device.type)
    patch: contextlib.AbstractContextManager = contextlib.nullcontext()
    if hasattr(module, "empty_cache"):
        module.empty_cache()
        patch = mock.patch.object(module, "empty_cache", lambda: None)
    try:
        with patch:
            yield
    finally:
        gc.unfreeze()
