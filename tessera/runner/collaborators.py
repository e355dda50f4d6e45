"""What the graph runners work with, handed to them explicitly by the ModelRunner."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch

from tessera.attention.base import AttentionBackend
from tessera.cache.kv_cache import KVCache
from tessera.compilation.graphs import GraphPool
from tessera.config.engine import GraphConfig, ParallelConfig
from tessera.forward.batch import ForwardBatch
from tessera.models.base import CausalLM
from tessera.platforms.base import Platform


@dataclasses.dataclass(frozen=True)
class GraphRunnerParts:
    platform: Platform
    device: torch.device
    model: CausalLM
    attn_backend: AttentionBackend
    kv_cache: KVCache
    graph_pool: GraphPool | None  # None where the platform has no graphs
    graph: GraphConfig
    parallel: ParallelConfig
    max_running_requests: int
    context_length: int
    vocab_size: int
    # the ModelRunner's: writes a batch's new slots into req_to_token (the cache's writer
    # policy), and runs a batch without graphs (the fallback)
    record_slots: Callable[[ForwardBatch], None]
    forward_eager: Callable[[ForwardBatch], torch.Tensor]

    @property
    def padding_req_row(self) -> int:
        return self.kv_cache.padding_req_row
