"""Triton attention backend for MLA models (DeepSeek-V2/V3): absorbed-form attention over the
latent cache (`MLAKVPool`), called through the `tessera::attention` op.

What forward receives (the model's absorbed MLA, `tessera.attention.triton_ops.mla_extend` says
why it is attention): q [T, H, L + R] (q_nope·W_UK | rotated q_pe), k [T, 1, L + R] (the new
tokens' normalised c_kv | rotated k_pe), v a view of k's first L dims (unused: the values are the
first L dims of every cached latent), out [T, H, L]. It stores k at out_cache_loc in the layer's
latent buffer, then writes out[i, h] = softmax_j(scaling * q[i, h]·latent_j)·latent_j[:L] over
the request's cached prefix and its new tokens up to i, and zeroes the rows past the real tokens.
The runner records the new tokens' slots in req_to_token before the forward (this backend does
not declare `writes_extend_slots`). Extend stores the new latents (`store_latent`), then reads
every key through req_to_token; decode is one launch (two with split-K) that also stores them
and takes each request's newest key from k itself (`mla_decode_attention`).

CUDA graphs (decode). forward in DECODE mode allocates nothing, never synchronises with the host
and reads no host-side list: the store and the attention read lengths and slots on the device,
the split count is a pure function of the batch size (`decode_num_splits`, fixed per captured
graph; seq_lens may change freely between replays), and the split-K workspace is allocated once
in __init__ for every batch size (the same backend instance must serve capture and replay).
Padding requests (row 0, slot 0) with seq_len 1 store their latent in the dump slot 0 and give
finite garbage; with seq_len 0 they store nothing and give zeros. Rows of q/out past
len(req_pool_indices) are zeroed; rows past len(out_cache_loc) store nothing. Extend batches are
not captured whole (extend_graph False): the launch is sized by the host's max_extend_len.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from tessera.attention.base import AttentionBackend, AttentionSupport
from tessera.attention.triton import (
    MIN_KEYS_PER_SPLIT,
    decode_split_count,
    decode_target_programs,
    trailing_decode_requests,
)
from tessera.attention.triton_ops.mla_decode import (
    mla_decode_attention,
    mla_decode_head_programs,
    mla_decode_workspace_shape,
    store_latent,
)
from tessera.attention.triton_ops.mla_extend import mla_extend_attention
from tessera.cache.kv_pool import MLAKVPool, ReqToTokenPool
from tessera.cache.spec import MLASpec
from tessera.forward.batch import ForwardBatch, ForwardMode


@dataclasses.dataclass
class _MLADecodeMetadata:
    batch_size: int
    num_splits: int
    part_out: torch.Tensor | None  # [B, H, S, L] fp32 view of the workspace; None for S == 1
    part_lse: torch.Tensor | None  # [B, H, S] fp32


@dataclasses.dataclass
class _MLAMixedDecode:
    """A mixed batch's trailing one-token requests, run by the decode kernel (see
    tessera.attention.triton.trailing_decode_requests); their latents are stored with the
    batch's."""
    first_row: int
    req_pool_indices: torch.Tensor  # [n] int64
    seq_lens: torch.Tensor          # [n] int32
    meta: _MLADecodeMetadata


@dataclasses.dataclass
class _MLAExtendMetadata:
    num_real_tokens: int
    max_extend_len: int
    # the extend launch's requests: all, or those before `decode`'s rows
    num_extend_requests: int
    decode: _MLAMixedDecode | None = None


class TritonMLABackend(AttentionBackend):
    name = "triton"
    support = AttentionSupport(kv_spec=MLASpec, decode_graph=True)  # see the module docstring

    def __init__(self, kv_pool: MLAKVPool, req_to_token_pool: ReqToTokenPool,
                 num_heads: int) -> None:
        super().__init__(kv_pool, req_to_token_pool, num_heads)
        spec: MLASpec = kv_pool.spec
        self.kv_lora_rank, self.rope_dim = spec.kv_lora_rank, spec.rope_dim
        self.device = kv_pool.device
        self._programs_per_split = mla_decode_head_programs(num_heads)
        self._target_programs = decode_target_programs(self.device)
        self._allocate_decode_workspace()

    # ---- decode workspace -----------------------------------------------------------------------
    def decode_num_splits(self, batch_size: int) -> int:
        """Key-range splits per request for a decode batch of this size (fixed per graph): the
        MHA backend's split-K policy (tessera.attention.triton)."""
        return decode_split_count(self._target_programs, batch_size, self._programs_per_split)

    def _allocate_decode_workspace(self) -> None:
        """One fp32 workspace for every batch size, allocated once so graphs keep its address.
        Only batches small enough to use >1 split need it, so the split policy bounds its size."""
        rows = 0  # (request, split) pairs
        batch = 1
        while self.decode_num_splits(batch) > 1:
            rows = max(rows, batch * self.decode_num_splits(batch))
            batch += 1
        self._part_out = torch.empty(rows * self.num_heads * self.kv_lora_rank,
                                     dtype=torch.float32, device=self.device)
        self._part_lse = torch.empty(rows * self.num_heads, dtype=torch.float32,
                                     device=self.device)

    # ---- per batch --------------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        b = forward_batch
        if b.mode is ForwardMode.DECODE:
            # shapes only: nothing here may depend on host copies of lengths (graph replay)
            b.attn_metadata = self._decode_metadata(int(b.req_pool_indices.shape[0]))
            return
        real, lens = self.real_tokens(b), b.extend_seq_lens_cpu
        num_decode = trailing_decode_requests(lens)
        if num_decode == 0:
            b.attn_metadata = _MLAExtendMetadata(real, b.max_extend_len, len(lens))
            return
        num_extend = len(lens) - num_decode
        decode = _MLAMixedDecode(real - num_decode, b.req_pool_indices[num_extend:],
                                 b.seq_lens[num_extend:], self._decode_metadata(num_decode))
        b.attn_metadata = _MLAExtendMetadata(real, max(lens[:num_extend]), num_extend, decode)

    def _decode_metadata(self, batch: int) -> _MLADecodeMetadata:
        splits = self.decode_num_splits(batch)
        part_out = part_lse = None
        if splits > 1:  # views of the persistent workspace: same address in every graph
            out_shape, lse_shape = mla_decode_workspace_shape(batch, self.num_heads, splits,
                                                              self.kv_lora_rank)
            part_out = self._part_out[:math.prod(out_shape)].view(out_shape)
            part_lse = self._part_lse[:math.prod(lse_shape)].view(lse_shape)
        return _MLADecodeMetadata(batch, splits, part_out, part_lse)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                layer_id: int, scaling: float, forward_batch: ForwardBatch,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        """q [T, H, L + R], k [T, 1, L + R], v (ignored), out [T, H, L]: see the module
        docstring."""
        assert rope is None, "the MLA backend does not fuse the rotary embedding"
        latent_dim = self.kv_lora_rank + self.rope_dim
        assert q.shape[1:] == (self.num_heads, latent_dim), (q.shape, self.num_heads, latent_dim)
        assert k.shape[1:] == (1, latent_dim) and out.shape[-1] == self.kv_lora_rank, (
            k.shape, out.shape)
        meta = self.metadata(forward_batch)
        cache = self.kv_pool.latent_buffers[layer_id]
        table = self.req_to_token_pool.req_to_token
        b = forward_batch
        if isinstance(meta, _MLADecodeMetadata):
            num_rows = meta.batch_size
            stored = min(b.out_cache_loc.shape[0], num_rows)
            # one launch (two with splits: the reduce) stores the new latents and attends, the
            # newest key from registers
            mla_decode_attention(q[:num_rows], cache, out[:num_rows], table, b.req_pool_indices,
                                 b.seq_lens, scaling, meta.part_out, meta.part_lse,
                                 min_split_len=MIN_KEYS_PER_SPLIT, new=k[:stored],
                                 new_loc=b.out_cache_loc[:stored])
        else:
            num_rows = meta.num_real_tokens
            store_latent(k[:num_rows], cache, b.out_cache_loc[:num_rows])
            n = meta.num_extend_requests
            mla_extend_attention(q, cache, out, table, b.req_pool_indices[:n],
                                 b.extend_prefix_lens[:n], b.extend_seq_lens[:n],
                                 b.extend_start_loc[:n], meta.max_extend_len, scaling)
            mixed = meta.decode
            if mixed is not None:  # their latents are stored above: every key from the cache
                rows = slice(mixed.first_row, num_rows)
                mla_decode_attention(q[rows], cache, out[rows], table, mixed.req_pool_indices,
                                     mixed.seq_lens, scaling, mixed.meta.part_out,
                                     mixed.meta.part_lse, min_split_len=MIN_KEYS_PER_SPLIT)
        if out.shape[0] > num_rows:
            out[num_rows:].zero_()
