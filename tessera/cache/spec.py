"""What the KV pool must hold per token and layer: a model's KV-cache spec.

A model answers `kv_cache_spec()` (tessera.models.base) with one of these; the pool, its size in
tokens and the attention backend family follow from it. The allocator, the req_to_token table,
the radix cache and the scheduler only ever see token slots, so a new spec changes none of them.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class MHASpec:
    """Multi-head (and grouped-query) attention: a K and a V vector per KV head, per layer."""

    num_layers: int
    num_kv_heads: int  # this rank's KV heads
    head_dim: int
    dtype: torch.dtype

    def bytes_per_token(self) -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * _itemsize(self.dtype)


@dataclasses.dataclass(frozen=True)
class MLASpec:
    """Multi-head latent attention (DeepSeek-V2/V3): one compressed vector per token per layer,
    `kv_lora_rank` latent dims followed by `rope_dim` dims of the rotated shared key."""

    num_layers: int
    kv_lora_rank: int
    rope_dim: int
    dtype: torch.dtype

    @property
    def latent_dim(self) -> int:
        return self.kv_lora_rank + self.rope_dim

    def bytes_per_token(self) -> int:
        return self.num_layers * self.latent_dim * _itemsize(self.dtype)


KVCacheSpec = MHASpec | MLASpec


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()
