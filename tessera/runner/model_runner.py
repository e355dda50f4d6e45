"""ModelRunner: owns the model, the KV pools and the attention backend; runs one ForwardBatch.

It picks how to run each batch: decode CUDA graph, piecewise CUDA graph, or eager (the graph
runners register themselves here when enabled).
"""
from __future__ import annotations

import dataclasses
import logging

import torch

from tessera.attention import get_attention_backend_class
from tessera.cache.kv_cache import KVCache
from tessera.compilation.capture_sizes import capture_sizes
from tessera.compilation.graphs import GraphPool
from tessera.config.engine import EngineConfig, auto_max_running_requests, max_running_requests_cap
from tessera.config.model import parse_dtype
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.forward.context import set_forward_context
from tessera.models.loader import load_model, load_model_config
from tessera.ops.linear import prepare_few_row_kernels, set_one_row_backend
from tessera.ops.triton import pdl
from tessera.platforms import platform_for_device
from tessera.runner.batch_plan import send_plan, send_stop
from tessera.runner.collaborators import GraphRunnerParts
from tessera.runner.tp_checks import agree_on_min, check_tp_divides, check_tp_world

logger = logging.getLogger(__name__)

CPU_MAX_KV_BYTES = 1 << 30  # CPU RAM is shared with everything else: keep the pool modest


@dataclasses.dataclass
class LogitsOutput:
    next_token_logits: torch.Tensor          # [B, V] float32, last new token of each request
    all_logits: torch.Tensor | None = None   # [T, V] when forward_batch.return_all_logits
    # [B] argmax of next_token_logits when the forward computed it (decode graphs do, inside
    # the graph); valid until the next forward, like the logits
    greedy_tokens: torch.Tensor | None = None


class ModelRunner:
    def __init__(self, config: EngineConfig) -> None:
        config = config.resolve()
        # a clear error now, not after the weights load, when no size suits the layout
        if not config.graph.disable_piecewise_cuda_graph:
            capture_sizes(config.graph, config.parallel)
        # the most requests that may run (the automatic choice, below, may pick fewer)
        rows_cap = max_running_requests_cap(config.scheduler, config.graph)
        if not config.graph.disable_cuda_graph:
            from tessera.runner.cuda_graph_runner import decode_graph_batch_sizes

            decode_graph_batch_sizes(config.graph, rows_cap, config.parallel)
        self.config = config
        self.tp_rank, self.tp_size = check_tp_world(config.parallel)
        self.platform = platform_for_device(config.load.device)
        self.device = torch.device(config.load.device)
        if self.tp_size > 1 and self.device.type != "cpu":
            # each node's ranks take its devices in order
            local = self.tp_rank % (self.tp_size // config.parallel.nnodes)
            self.platform.set_device(local)
            self.device = torch.device(self.device.type, local)
        self.dtype = parse_dtype(config.load.dtype)
        self.model_config = load_model_config(config.load.model_path)
        mc = self.model_config
        # checked before the weights load: a bad value should fail in a second, not minutes
        self.context_length = config.load.context_length or mc.max_position_embeddings
        if self.context_length > mc.max_position_embeddings:
            raise ValueError(f"--context-length {self.context_length} exceeds the model's "
                             f"max_position_embeddings {mc.max_position_embeddings}")
        self.platform.manual_seed(config.load.seed)
        # process-wide kernel choices, before anything is captured (decode graphs hold them)
        set_one_row_backend(config.backend.linear_backend)
        prepare_few_row_kernels(self.device)
        pdl.set_enabled(not config.backend.disable_pdl)
        if self.tp_size > 1:
            check_tp_divides(self.model_config, self.tp_size)
        self.model = load_model(config.load.model_path, self.model_config, config.load.load_format,
                                self.dtype, self.device, config.load.seed,
                                config.load.quantization)
        self.kv_cache_spec = self.model.kv_cache_spec()
        kv_tokens = self._kv_cache_tokens(rows_cap)
        self.max_running_requests = rows_cap
        if config.scheduler.max_running_requests is None:
            self.max_running_requests, why = auto_max_running_requests(
                kv_tokens, config.scheduler, config.graph)
            logger.info("max running requests auto -> %d (%s)", self.max_running_requests, why)
            self.config = config = dataclasses.replace(config, scheduler=dataclasses.replace(
                config.scheduler, max_running_requests=self.max_running_requests))
        # the one owner of KV memory and req_to_token; the engine hands it to the scheduler
        self.kv_cache = KVCache(self.kv_cache_spec, kv_tokens, self.max_running_requests,
                                self.context_length, self.device)
        self.kv_cache_tokens = self.kv_cache.num_tokens
        # rank 0's scheduler writes cached prefixes into req_to_token; the plans repeat them
        self.sends_plans = self.tp_size > 1 and self.tp_rank == 0
        if self.sends_plans:
            self.req_to_token_pool.write_log = []
        backend_cls = get_attention_backend_class(config.backend.attention_backend,
                                                  self.kv_cache_spec)
        self.attn_backend = backend_cls(self.kv_cache.pool, self.kv_cache.req_to_token_pool,
                                        self.model.num_attention_heads())
        self.graph_runners: list = []  # tried in order; each says whether it can run a batch
        self.init_graph_runners()
        logger.info("KV cache: %d tokens (%.2f GiB, %s), context length %d, %d request rows",
                    self.kv_cache_tokens, self.kv_cache.memory_bytes() / (1 << 30),
                    type(self.kv_cache_spec).__name__, self.context_length,
                    self.max_running_requests)

    # the KV cache's parts, as the graph runners and benchmarks read them
    @property
    def allocator(self):
        return self.kv_cache.allocator

    @property
    def req_to_token_pool(self):
        return self.kv_cache.req_to_token_pool

    @property
    def padding_req_row(self) -> int:
        return self.kv_cache.padding_req_row

    def _kv_cache_tokens(self, max_requests: int) -> int:
        """The KV pool's size in tokens; on the CPU bounded by what `max_requests` requests of
        the full context would use."""
        cache = self.config.cache
        if cache.kv_cache_tokens is not None:
            if cache.kv_cache_tokens < 1:
                raise ValueError("--kv-cache-tokens must be >= 1")
            return cache.kv_cache_tokens
        if not 0 < cache.mem_fraction_static < 1:
            raise ValueError("--mem-fraction-static must be in (0, 1)")
        free, total = self.platform.mem_get_info()
        per_token = self.kv_cache_spec.bytes_per_token()
        if self.device.type == "cpu":
            budget = min(free * cache.mem_fraction_static * 0.5, CPU_MAX_KV_BYTES,
                         max_requests * self.context_length * per_token)
        else:
            # the static fraction covers weights (already resident) and the KV pool
            budget = free - total * (1 - cache.mem_fraction_static)
        tokens = int(budget // per_token)
        if self.tp_size > 1:  # every rank's pool must hold the slots rank 0 hands out
            tokens = agree_on_min(tokens)
        if tokens < 1:
            raise ValueError(f"no memory left for the KV cache (free {free / 2**30:.1f} GiB); "
                             f"raise --mem-fraction-static or pass --kv-cache-tokens")
        return tokens

    def graph_runner_parts(self) -> GraphRunnerParts:
        """What a graph runner works with (tests build graph runners from it too)."""
        return GraphRunnerParts(
            platform=self.platform, device=self.device, model=self.model,
            attn_backend=self.attn_backend, kv_cache=self.kv_cache, graph_pool=self.graph_pool,
            graph=self.config.graph, parallel=self.config.parallel,
            max_running_requests=self.max_running_requests, context_length=self.context_length,
            vocab_size=self.model_config.vocab_size, record_slots=self.record_slots,
            forward_eager=self.forward_eager)

    def init_graph_runners(self) -> None:
        """Decode CUDA graphs (uniform decode batches) first, then piecewise graphs (extend),
        all in one graph pool."""
        graph = self.config.graph
        wants_graphs = not (graph.disable_cuda_graph and graph.disable_piecewise_cuda_graph)
        self.graph_pool = (GraphPool(self.platform) if wants_graphs and (
            self.platform.supports_full_graph or self.platform.supports_piecewise_graph)
            else None)
        parts = self.graph_runner_parts()
        if not graph.disable_cuda_graph:
            from tessera.runner.cuda_graph_runner import DecodeGraphRunner

            self.graph_runners.append(DecodeGraphRunner(parts))
        if not graph.disable_piecewise_cuda_graph:
            from tessera.runner.piecewise_graph_runner import PiecewiseGraphRunner

            self.graph_runners.append(PiecewiseGraphRunner(parts))

    def release_device_memory(self) -> None:
        """Drop what this runner holds on the device (graphs and their pool, compiled pieces, KV
        cache, weights); the runner cannot run a batch afterwards. For a benchmark that needs the
        memory for another model once tessera's cases are done (bench latency --compare hf)."""
        self.graph_runners.clear()
        self.graph_pool = None
        self.attn_backend = None
        self.kv_cache = None
        self.model = None
        torch._dynamo.reset()  # compiled pieces keep references to the weights they traced
        self.platform.synchronize()
        self.platform.empty_cache()

    def stop_other_ranks(self) -> None:
        """Rank 0 under TP: the other ranks leave their plan loop (tessera.runner.tp_worker)."""
        if self.sends_plans:
            send_stop()
            self.sends_plans = False

    @torch.inference_mode()
    def forward(self, forward_batch: ForwardBatch) -> LogitsOutput:
        """Under TP, rank 0 first broadcasts the batch plan (tessera.runner.batch_plan) so every
        rank runs this same forward. Records the new tokens' KV slots in req_to_token (see record_slots), then runs the
        batch on the first graph runner that can take it, else eagerly. An EXTEND batch on a
        backend whose layer-0 extend launch writes those entries (writes_extend_slots) skips
        record_slots on every path: graph replay, eager, and the piecewise runner's fallback."""
        if self.sends_plans:
            send_plan(forward_batch, self.req_to_token_pool)
        by_attention = (forward_batch.mode is ForwardMode.EXTEND
                        and self.attn_backend.support.writes_extend_slots)
        for runner in self.graph_runners:
            if runner.can_run(forward_batch):
                if not (runner.records_slots or by_attention):
                    self.record_slots(forward_batch)
                hidden = runner.replay(forward_batch)
                if runner.captures_logits:  # decode graphs end with the LM head (+ argmax)
                    bs = forward_batch.batch_size
                    logits = runner.logits[:bs]
                    return LogitsOutput(logits, logits if forward_batch.return_all_logits
                                        else None, runner.greedy_tokens[:bs])
                break
        else:
            if not by_attention:
                self.record_slots(forward_batch)
            hidden = self.forward_eager(forward_batch)
        return self.compute_logits(hidden, forward_batch)

    def record_slots(self, forward_batch: ForwardBatch) -> None:
        """req_to_token[row, position] = out_cache_loc for every new token of the batch, as one
        scatter on the device (no host sync: the per-token rows come from repeat_interleave
        with the known total). The scheduler only allocates slots; this is where they are
        written down, right before the forward that fills them (decode graphs do it inside the
        graph: DecodeGraphRunner.records_slots)."""
        table = self.req_to_token_pool.req_to_token
        rows = forward_batch.req_pool_indices
        if forward_batch.mode is not ForwardMode.DECODE:
            rows = torch.repeat_interleave(rows, forward_batch.extend_seq_lens,
                                           output_size=forward_batch.num_tokens)
        table[rows, forward_batch.positions] = forward_batch.out_cache_loc.to(table.dtype)

    def forward_eager(self, forward_batch: ForwardBatch) -> torch.Tensor:
        """Final hidden states of the batch's logit rows (ForwardBatch.logit_rows, in that
        order): one per request of an EXTEND batch, one per token otherwise. So do the graph
        runners' replays."""
        self.attn_backend.init_forward_metadata(forward_batch)
        rows = forward_batch.logit_rows()
        with set_forward_context(forward_batch, self.attn_backend):
            if rows is None:
                return self.model(forward_batch.input_ids, forward_batch.positions)
            return self.model.finish(self.model.trunk(forward_batch.input_ids,
                                                      forward_batch.positions), rows)

    def compute_logits(self, hidden: torch.Tensor, forward_batch: ForwardBatch) -> LogitsOutput:
        """hidden: as forward_eager returns it."""
        if forward_batch.mode is ForwardMode.DECODE:
            # one new token per request, in batch order: rows 0..bs-1 are the last tokens, so no
            # index arithmetic and no gather kernel on the decode hot path
            last_hidden = hidden[: forward_batch.batch_size]
        elif not forward_batch.return_all_logits:  # already the last tokens' rows only
            last_hidden = hidden
        else:
            last_hidden = hidden.index_select(0, forward_batch.last_token_rows())
        next_logits = self.model.compute_logits(last_hidden).float()
        all_logits = None
        if forward_batch.return_all_logits:
            all_logits = self.model.compute_logits(hidden[: forward_batch.num_tokens]).float()
        return LogitsOutput(next_logits, all_logits)
