"""AttentionBackend: writes the new tokens' K/V into the pool and attends over the cached context.

A backend declares what it supports in `support` (an AttentionSupport, read by the runner and the
graph runners; never probed with getattr) and keeps nothing per batch on itself: the metadata it
works out for a batch lives on that ForwardBatch (`attn_metadata`), so a batch carries its own
state into graph capture and replay. Graph runners call the capture hook explicitly:
`init_forward_metadata_capture` for the static batch a graph is captured with.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch

from tessera.cache.kv_pool import KVPool, ReqToTokenPool
from tessera.cache.spec import MHASpec, MLASpec
from tessera.forward.batch import ForwardBatch, ForwardMode


@dataclasses.dataclass(frozen=True)
class AttentionSupport:
    """What a backend can do. The defaults are the least a backend must offer: eager EXTEND and
    DECODE batches over an MHA pool."""

    kv_spec: type = MHASpec
    """The KV-cache spec family its pool must have (MHASpec; an MLA backend declares MLASpec)."""
    decode_graph: bool = False
    """forward() on a DECODE batch can be captured into a (CUDA) graph and replayed with new
    contents in the same tensors: it allocates nothing, never syncs with the host, reads no
    host-side list (seq_lens_cpu, extend_*_cpu: placeholders in a graph's static batch) and no
    extend_* tensor, and its metadata depends only on the batch's shapes."""
    extend_graph: bool = False
    """forward() on an EXTEND batch can be captured together with the pieces around it (the
    piecewise runner's whole-forward graphs) and replayed for other batches of at most as many
    requests staged into the same tensors: it allocates nothing, never syncs, takes every
    per-request value from the batch's tensors, and honours `pad_request` (the last request is
    the padding of the graph's token count: zero its output rows, store nothing)."""
    fused_decode_rope: bool = False
    """forward() of a DECODE batch takes `rope=(positions, cos_sin_cache)`: q and k arrive
    un-rotated and the backend applies the NeoX rotary embedding (with the native op's rounding)
    in its own kernel. Other backends are never passed `rope`."""
    writes_extend_slots: bool = False
    """forward() of an EXTEND batch at layer 0 also writes the new tokens' slots into
    req_to_token (req_to_token[row, prefix + i] = out_cache_loc[i]), so the runner skips its
    separate scatter (see tessera.cache.kv_cache's writer policy)."""


class AttentionBackend(ABC):
    name: str = ""
    support = AttentionSupport()

    def __init__(self, kv_pool: KVPool, req_to_token_pool: ReqToTokenPool,
                 num_heads: int) -> None:
        """kv_pool and req_to_token_pool: a KVCache's (tessera.cache.kv_cache); num_heads: this
        rank's query heads."""
        spec = kv_pool.spec
        if not isinstance(spec, self.support.kv_spec):
            raise TypeError(f"attention backend {self.name!r} needs a "
                             f"{self.support.kv_spec.__name__} KV cache, the model has "
                             f"{type(spec).__name__}")
        self.kv_pool = kv_pool
        self.req_to_token_pool = req_to_token_pool
        self.num_heads = num_heads
        if isinstance(spec, MLASpec):  # MQA over the latent: one shared "head" per token
            self.num_kv_heads, self.head_dim = 1, spec.latent_dim
        else:
            self.num_kv_heads, self.head_dim = spec.num_kv_heads, spec.head_dim

    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        """Work out the batch's metadata once per forward (shared by all layers) and store it on
        the batch (`forward_batch.attn_metadata`)."""

    def init_forward_metadata_capture(self, forward_batch: ForwardBatch) -> None:
        """The capture hook: metadata for the static batch a graph is captured with (inside the
        capture, so whatever it computes on the device is replayed). Only called for modes the
        backend declares graph-safe."""
        graph_safe = (self.support.decode_graph if forward_batch.mode is ForwardMode.DECODE
                      else self.support.extend_graph)
        if not graph_safe:
            raise RuntimeError(f"attention backend {self.name!r} cannot be captured for "
                               f"{forward_batch.mode.value} batches")
        self.init_forward_metadata(forward_batch)

    def metadata(self, forward_batch: ForwardBatch) -> Any:
        """The batch's metadata, worked out on first use when the runner did not."""
        if forward_batch.attn_metadata is None:
            self.init_forward_metadata(forward_batch)
        return forward_batch.attn_metadata

    @abstractmethod
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                layer_id: int, scaling: float, forward_batch: ForwardBatch,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """q [T, Hq, D], k/v [T, Hk, D]; write K/V at forward_batch.out_cache_loc, then attention
        output into out[:real_tokens]; zero out[real_tokens:] (padding). `rope`: see
        AttentionSupport.fused_decode_rope."""

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
