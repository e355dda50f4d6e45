"""AttentionBackend: writes the new tokens' K/V into the pool and attends over the cached context."""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch

from tessera.cache.kv_pool import KVPool, ReqToTokenPool
from tessera.forward.batch import ForwardBatch


class AttentionBackend(ABC):
    name: str = ""
    supports_decode_graph: bool = False
    """True when forward() on a DECODE batch can be captured into a (CUDA) graph and replayed with
    new contents in the same tensors: it allocates nothing, never syncs with the host, reads no
    host-side list (seq_lens_cpu, extend_*_cpu: placeholders in a graph's static batch) and no
    extend_* tensor, and its init_forward_metadata depends only on the batch's shapes."""
    fuses_decode_rope: bool = False
    """True when forward() of a DECODE batch takes `rope=(positions, cos_sin_cache)`: q and k
    arrive un-rotated and the backend applies the NeoX rotary embedding (with the native op's
    rounding) in its own kernel. Other backends are never passed `rope`."""
    records_extend_slots: bool = False
    """True when forward() of an EXTEND batch at layer 0 also writes the new tokens' slots into
    req_to_token (req_to_token[row, prefix + i] = out_cache_loc[i]), as ModelRunner.record_slots
    does: ModelRunner.forward then skips that separate scatter for extend batches (three small
    kernels and ~50 us of host before the first graph piece)."""
    supports_extend_graph: bool = False
    """True when forward() on an EXTEND batch can be captured into a (CUDA) graph together with the
    pieces around it (PiecewiseGraphRunner's whole-forward graphs) and replayed for other batches
    of at most as many requests staged into the same tensors: it allocates nothing, never syncs,
    takes every per-request value from the batch's tensors, and honours `pad_request` (the last
    request is the padding of the graph's token count: zero its output rows, store nothing)."""

    def __init__(self, kv_pool: KVPool, req_to_token_pool: ReqToTokenPool,
                 num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        self.kv_pool = kv_pool
        self.req_to_token_pool = req_to_token_pool
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Precompute per-batch metadata once per forward (shared by all layers)."""

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                layer_id: int, scaling: float, forward_batch: ForwardBatch,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """q [T, Hq, D], k/v [T, Hk, D]; write K/V at forward_batch.out_cache_loc, then attention
        output into out[:real_tokens]; zero out[real_tokens:] (padding). `rope`: see
        fuses_decode_rope."""

    def prepare(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                layer_id: int, scaling: float) -> Callable[[ForwardBatch], None] | None:
        """`batch -> forward(q, k, v, out, layer_id, scaling, batch)` for tensors that stay put
        across many forwards (a piecewise graph's replay plan: one per layer and size), with
        whatever does not depend on the batch worked out once. None: nothing to gain, the caller
        calls forward."""
        return None

    @staticmethod
    def real_tokens(forward_batch: ForwardBatch) -> int:
        return sum(forward_batch.extend_seq_lens_cpu)
