"""Triton attention backend: split-K decode and flash-style extend over the token-granular cache.

Semantics are those of `TorchNativeAttentionBackend` (the reference); the kernels live in
`tessera.attention.triton_ops`. An EXTEND batch that ends in one-token requests (decoding next to
a chunked prefill) runs the extend kernel for the requests before them and the decode kernel for
those (`trailing_decode_requests`); a graph's padded batch always runs whole in the extend kernel.

CUDA graphs (decode). `forward` in DECODE mode is capture-safe: it allocates nothing, never
synchronises with the host and reads no host-side length. What a decode graph runner must know:
  * Static per captured batch size: the tensors of the ForwardBatch it captured with (q/k/v/out,
    out_cache_loc, req_pool_indices, seq_lens): replay refills them in place. The backend's split-K
    workspace is allocated once in __init__ for every batch size and never reallocated, so its
    address is static too (the same backend instance must serve capture and replay).
  * The split count is a pure function of the batch size (`decode_num_splits`), so it is fixed per
    captured graph; seq_lens may change freely between replays (0 .. max_context_len): how many
    splits a request really uses is decided on the device, and the splits are merged inside the
    same launch (arrival counters, persistent and always left at 0).
  * Decode is ONE kernel per layer: it also stores the new tokens' K/V (read from the q/k/v views
    given to forward, any strides) and attends to them from registers.
  * Run the forward eagerly once per batch size before capturing it (the usual warm-up): Triton
    compiles a kernel on its first launch, and the split count (a compile-time constant) differs
    between batch sizes.
  * The capture hook (`init_forward_metadata_capture`) runs inside the capture and only reads
    shapes, never host length lists, so nothing needs recomputing at replay time.
  * Padding requests: req_pool_indices 0, seq_lens 1 (or 0), out_cache_loc 0. Their K/V land in
    the dump slot 0; their output rows are finite garbage (seq_len 1: attention over one key of
    row 0) or zeros (seq_len 0) and are meant to be sliced off.
  * Rows of q/out past `len(req_pool_indices)` are zeroed; rows past len(out_cache_loc) are not
    written to the cache.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import torch
import triton

from tessera.attention.base import AttentionBackend, AttentionSupport
from tessera.attention.triton_ops import (
    decode_attention,
    decode_counters_shape,
    decode_head_programs,
    decode_workspace_shape,
)
from tessera.attention.triton_ops.extend_attention import ExtendAttention
from tessera.cache.kv_pool import MHAKVPool, ReqToTokenPool
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.ops.triton.launch import metadata_variant

# Split-K policy for decode: enough (request, kv-head, split) programs for this many waves of the
# device's SMs, at most MAX_DECODE_SPLITS splits, and (on the device, per request) at least
# MIN_KEYS_PER_SPLIT keys per split so short contexts don't pay for many near-empty splits
# (unused splits return at once; a request that fits one split skips the merge).
DECODE_WAVES = 2
MAX_DECODE_SPLITS = 16
MIN_KEYS_PER_SPLIT = 64


def _multiprocessor_count(device: torch.device) -> int:
    """SMs of the device (CUDA; MUSA's torch_musa mirrors the API); a small fixed number on CPU,
    where the kernels only run interpreted in tests."""
    if device.type == "cpu":
        return 4
    props = torch.get_device_module(device.type).get_device_properties(device)
    return int(getattr(props, "multi_processor_count", 64))


def decode_target_programs(device: torch.device) -> int:
    """Programs a decode launch aims for: DECODE_WAVES waves of the device's SMs."""
    return DECODE_WAVES * _multiprocessor_count(device)


def decode_split_count(target_programs: int, batch_size: int, programs_per_split: int) -> int:
    """Key-range splits per request for a decode batch of this size (fixed per graph): enough
    programs for `target_programs`, at most MAX_DECODE_SPLITS."""
    wanted = triton.cdiv(target_programs, max(1, batch_size) * programs_per_split)
    return max(1, min(MAX_DECODE_SPLITS, wanted))


@dataclasses.dataclass
class _DecodeMetadata:
    batch_size: int
    num_splits: int
    part_out: torch.Tensor | None  # [B, Hq, S, D] fp32 view of the workspace; None for S == 1
    part_lse: torch.Tensor | None  # [B, Hq, S] fp32
    counters: torch.Tensor | None  # [B, head programs] int32, always 0 between launches


def trailing_decode_requests(extend_lens: list[int]) -> int:
    """How many one-token requests end a mixed batch (the scheduler puts the decoding requests
    after the prefill chunks), when a longer request runs before them; else 0. Those go to the
    decode kernel: in an extend kernel each would be a whole query tile per head with one real
    row, reading its context once per head."""
    count = next((i for i, n in enumerate(reversed(extend_lens)) if n != 1), len(extend_lens))
    return 0 if count == len(extend_lens) else count


@dataclasses.dataclass
class _MixedDecode:
    """A mixed batch's trailing one-token requests (`trailing_decode_requests`: decoding next to
    a chunked prefill), run by the decode kernel after the extend launch."""
    first_row: int                 # their first token row; rows first_row.. are theirs, in order
    req_pool_indices: torch.Tensor  # [n] int64
    seq_lens: torch.Tensor         # [n] int32, the new token included
    positions: torch.Tensor        # [n] int64, the new token's position (= seq_len - 1)
    loc: torch.Tensor              # [n] int64, its KV slot
    meta: _DecodeMetadata          # split count and workspace for n requests


@dataclasses.dataclass
class _ExtendMetadata:
    num_real_tokens: int
    # ExtendAttention's per-batch arguments: req_pool_indices, prefix/extend lens, starts,
    # max_extend_len, out_cache_loc, and their variant key (one per forward, not per layer);
    # with `decode`, those of the requests before its rows only
    launch_args: tuple
    variant: tuple
    decode: _MixedDecode | None = None


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    support = AttentionSupport(
        decode_graph=True,  # see the module docstring
        # every extend launch reads its lengths from device tensors
        extend_graph=True,
        fused_decode_rope=True,  # the decode kernel rotates q and the new k itself
        # layer 0's extend launch writes the new tokens' req_to_token entries
        writes_extend_slots=True)

    def __init__(self, kv_pool: MHAKVPool, req_to_token_pool: ReqToTokenPool,
                 num_heads: int) -> None:
        super().__init__(kv_pool, req_to_token_pool, num_heads)
        if num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {num_heads} is not a multiple of num_kv_heads "
                             f"{self.num_kv_heads}")
        self.device = self.kv_pool.device
        self._programs_per_split = decode_head_programs(num_heads, self.num_kv_heads)
        self._target_programs = decode_target_programs(self.device)
        self._allocate_decode_workspace()

    # ---- decode workspace -----------------------------------------------------------------------
    def decode_num_splits(self, batch_size: int) -> int:
        """Key-range splits per request for a decode batch of this size (fixed per graph)."""
        return decode_split_count(self._target_programs, batch_size, self._programs_per_split)

    def _allocate_decode_workspace(self) -> None:
        """One fp32 workspace for every batch size, allocated once so graphs can keep its address.

        Only batches small enough to use >1 split need it (one split writes the output directly),
        so its size is bounded by the split policy, not by the maximum batch size.
        """
        rows = 0  # (request, split) pairs
        batch = 1
        while self.decode_num_splits(batch) > 1:
            rows = max(rows, batch * self.decode_num_splits(batch))
            batch += 1
        self._part_out = torch.empty(rows * self.num_heads * self.head_dim, dtype=torch.float32,
                                     device=self.device)
        self._part_lse = torch.empty(rows * self.num_heads, dtype=torch.float32,
                                     device=self.device)
        # zeroed once here; every launch leaves them at 0 again
        self._counters = torch.zeros(rows * self._programs_per_split, dtype=torch.int32,
                                     device=self.device)

    # ---- per batch --------------------------------------------------------------------------------
    def init_forward_metadata(self, forward_batch: ForwardBatch) -> None:
        if forward_batch.mode is ForwardMode.DECODE:
            # shapes only: nothing here may depend on host copies of lengths (graph replay)
            batch = int(forward_batch.req_pool_indices.shape[0])
            forward_batch.attn_metadata = self._decode_metadata(batch)
        else:
            forward_batch.attn_metadata = self._extend_metadata(forward_batch)

    def _decode_metadata(self, batch: int) -> _DecodeMetadata:
        splits = self.decode_num_splits(batch)
        part_out = part_lse = counters = None
        if splits > 1:
            # views of the persistent workspace: same address in every step and graph
            out_shape, lse_shape = decode_workspace_shape(batch, self.num_heads, splits,
                                                          self.head_dim)
            part_out = self._part_out[:math.prod(out_shape)].view(out_shape)
            part_lse = self._part_lse[:math.prod(lse_shape)].view(lse_shape)
            count_shape = decode_counters_shape(batch, self.num_heads, self.num_kv_heads)
            counters = self._counters[:math.prod(count_shape)].view(count_shape)
        return _DecodeMetadata(batch, splits, part_out, part_lse, counters)

    def _extend_metadata(self, b: ForwardBatch) -> _ExtendMetadata:
        tensors = (b.req_pool_indices, b.extend_prefix_lens, b.extend_seq_lens,
                   b.extend_start_loc, b.out_cache_loc)
        if b.pad_request:
            # a graph's padded batch: any split of its tokens, the padding request's rows zeroed
            # by the kernel
            return _ExtendMetadata(num_real_tokens=b.num_tokens,
                                   launch_args=(*tensors[:4], b.num_tokens, tensors[4]),
                                   variant=metadata_variant(*tensors))
        real = self.real_tokens(b)
        lens = b.extend_seq_lens_cpu
        num_decode = trailing_decode_requests(lens)
        if num_decode == 0:
            return _ExtendMetadata(num_real_tokens=real,
                                   launch_args=(*tensors[:4], b.max_extend_len, tensors[4]),
                                   variant=metadata_variant(*tensors))
        first = real - num_decode
        num_extend = len(lens) - num_decode
        decode = _MixedDecode(first_row=first, req_pool_indices=b.req_pool_indices[num_extend:],
                              seq_lens=b.seq_lens[num_extend:], positions=b.positions[first:real],
                              loc=b.out_cache_loc[first:real],
                              meta=self._decode_metadata(num_decode))
        head = tuple(t[:num_extend] for t in tensors[:4])
        return _ExtendMetadata(num_real_tokens=real,
                               launch_args=(*head, max(lens[:num_extend]), tensors[4]),
                               variant=metadata_variant(*head, tensors[4]), decode=decode)

    def _mixed_decode(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                      layer_id: int, scaling: float, mixed: _MixedDecode) -> None:
        """The decode rows of a mixed batch: one decode launch (stores their K/V, attends); at
        layer 0 their req_to_token entries are written too, as the extend launch does for its
        requests (writes_extend_slots)."""
        rows = slice(mixed.first_row, mixed.first_row + mixed.loc.shape[0])
        table = self.req_to_token_pool.req_to_token
        if layer_id == 0:
            table[mixed.req_pool_indices, mixed.positions] = mixed.loc.to(table.dtype)
        meta = mixed.meta
        decode_attention(q[rows], self.kv_pool.k_buffers[layer_id],
                         self.kv_pool.v_buffers[layer_id], out[rows], table,
                         mixed.req_pool_indices, mixed.seq_lens, scaling, meta.part_out,
                         meta.part_lse, min_split_len=MIN_KEYS_PER_SPLIT,
                         counters=meta.counters, k_new=k[rows], v_new=v[rows],
                         new_loc=mixed.loc)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                layer_id: int, scaling: float, forward_batch: ForwardBatch,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
        meta = self.metadata(forward_batch)
        k_cache = self.kv_pool.k_buffers[layer_id]
        v_cache = self.kv_pool.v_buffers[layer_id]
        table = self.req_to_token_pool.req_to_token
        if isinstance(meta, _DecodeMetadata):
            num_rows = meta.batch_size
            loc = forward_batch.out_cache_loc
            positions, cos_sin_cache = rope if rope is not None else (None, None)
            # one launch: (rotates q and the new k,) stores the new K/V at loc and attends (new
            # key from registers)
            decode_attention(q[:num_rows], k_cache, v_cache, out[:num_rows], table,
                             forward_batch.req_pool_indices, forward_batch.seq_lens, scaling,
                             meta.part_out, meta.part_lse, min_split_len=MIN_KEYS_PER_SPLIT,
                             counters=meta.counters, k_new=k[:loc.shape[0]],
                             v_new=v[:loc.shape[0]], new_loc=loc,
                             positions=None if positions is None else positions[:num_rows],
                             cos_sin_cache=cos_sin_cache)
        else:
            assert rope is None, "the rotary embedding is fused into decode only"
            num_rows = meta.num_real_tokens
            # one launch: stores the real tokens' K/V at out_cache_loc and attends (the new keys
            # read from k/v, the cached prefix through req_to_token)
            ExtendAttention(q, k_cache, v_cache, out, table, scaling, k_new=k, v_new=v,
                            record_slots=layer_id == 0)(*meta.launch_args, variant=meta.variant,
                                                        pad_last=forward_batch.pad_request)
            if meta.decode is not None:
                self._mixed_decode(q, k, v, out, layer_id, scaling, meta.decode)
        if out.shape[0] > num_rows:
            out[num_rows:].zero_()

    def prepare(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                layer_id: int, scaling: float) -> Callable[[ForwardBatch], None]:
        """Extend batches: the layer's ExtendAttention built once, so a call is the kernel's
        launcher call (see tessera.ops.triton.launch); decode batches go through forward."""
        launch = ExtendAttention(q, self.kv_pool.k_buffers[layer_id],
                                 self.kv_pool.v_buffers[layer_id], out,
                                 self.req_to_token_pool.req_to_token, scaling, k_new=k, v_new=v,
                                 record_slots=layer_id == 0)
        rows = out.shape[0]

        def run(forward_batch: ForwardBatch) -> None:
            meta = self.metadata(forward_batch)
            if not isinstance(meta, _ExtendMetadata):
                self.forward(q, k, v, out, layer_id, scaling, forward_batch)
                return
            launch(*meta.launch_args, variant=meta.variant, pad_last=forward_batch.pad_request)
            if meta.decode is not None:
                self._mixed_decode(q, k, v, out, layer_id, scaling, meta.decode)
            if rows > meta.num_real_tokens:
                out[meta.num_real_tokens:].zero_()

        run.launch = launch  # type: ignore[attr-defined]  (tests look at its launch counts)
        return run
