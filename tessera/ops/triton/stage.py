"""Staging an extend batch into the static inputs of a whole-forward extend graph, in one launch.

A whole-forward graph (tessera.runner.piecewise_graph_runner) of `size` tokens reads fixed
tensors: the token ids, positions and KV slots ([size]) and, for attention, one entry per
request slot ([R]: req_to_token row, prefix length, new-token count, first token, last token).
A batch of n tokens in b <= R - 1 requests goes in as: tokens 0..n-1 copied and the rest zeroed
(token 0 at position 0, K/V into the dump slot 0); requests 0..b-1 copied; slots b..R-2 empty (no
new tokens, first token `size`: their attention programs exit at once); slot R-1 the padding
request of tokens n..size-1, whose attention output the extend kernel zeroes (its pad_request).
Every slot's last token is first + count - 1: request i's row of the logits for i < b, a valid
row (size - 1) for the others. With torch ops that is ~7 launches and a host->device copy of the
tail entries; here it is one launch whose scalars carry n and b.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.ops.triton.launch import KernelLauncher, metadata_variant

BLOCK = 1024


# the sources are views into a batch's packed host copy at any offset: not specialising on their
# alignment keeps this one compiled kernel
@triton.jit(do_not_specialize=["n", "b", "size", "pad_row"],
            do_not_specialize_on_alignment=["ids_src", "pos_src", "loc_src", "rows_src",
                                            "prefix_src", "lens_src", "starts_src"])
def _stage_kernel(ids_src, pos_src, loc_src, ids_dst, pos_dst, loc_dst,
                  rows_src, prefix_src, lens_src, starts_src,
                  rows_dst, prefix_dst, lens_dst, starts_dst, last_dst,
                  n, b, size, pad_row, SLOTS: tl.constexpr, BLOCK: tl.constexpr,
                  BLOCK_R: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    real = offs < n
    inside = offs < size
    tl.store(ids_dst + offs, tl.load(ids_src + offs, mask=real, other=0), mask=inside)
    tl.store(pos_dst + offs, tl.load(pos_src + offs, mask=real, other=0), mask=inside)
    tl.store(loc_dst + offs, tl.load(loc_src + offs, mask=real, other=0), mask=inside)
    if tl.program_id(0) == 0:
        r = tl.arange(0, BLOCK_R)
        given = r < b
        pad = r == SLOTS - 1
        rows = tl.load(rows_src + r, mask=given, other=0)
        tl.store(rows_dst + r, tl.where(given, rows, pad_row), mask=r < SLOTS)
        prefix = tl.load(prefix_src + r, mask=given, other=0)
        tl.store(prefix_dst + r, prefix, mask=r < SLOTS)
        lens = tl.load(lens_src + r, mask=given, other=0)
        lens = tl.where(pad, size - n, lens)
        tl.store(lens_dst + r, lens, mask=r < SLOTS)
        starts = tl.load(starts_src + r, mask=given, other=0)
        starts = tl.where(given, starts, tl.where(pad, n, size))
        tl.store(starts_dst + r, starts, mask=r < SLOTS)
        tl.store(last_dst + r, starts + lens - 1, mask=r < SLOTS)


_launcher = KernelLauncher(_stage_kernel)


def stage_extend_inputs(src_tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                        src_requests: tuple[torch.Tensor, ...],
                        dst_tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                        dst_requests: tuple[torch.Tensor, ...], pad_row: int,
                        use_triton: bool | None = None) -> None:
    """src_tokens: (input_ids, positions, out_cache_loc) [n] int64; src_requests: (rows [b]
    int64, prefix lens, new-token counts, first tokens [b] int32); dst_*: the graph's tensors,
    [size] and [R] (R >= b + 1) of the same dtypes, dst_requests with a fifth: the last tokens
    [R] int32. See the module docstring for the layout.
    use_triton: default off the CPU (where Triton runs only interpreted, in tests)."""
    n, b = src_tokens[0].shape[0], src_requests[0].shape[0]
    size, slots = dst_tokens[0].shape[0], dst_requests[0].shape[0]
    assert n <= size and b < slots, (n, size, b, slots)
    if use_triton is None:
        use_triton = src_tokens[0].device.type != "cpu"
    if not use_triton:
        stage_extend_inputs_native(src_tokens, src_requests, dst_tokens, dst_requests, pad_row)
        return
    # the key fixes what the JIT specialises on: the tensors' alignment and the constexprs
    variant = (metadata_variant(*src_tokens, *src_requests, *dst_tokens, *dst_requests), slots)
    _launcher(variant, (triton.cdiv(size, BLOCK),),
              (*src_tokens, *dst_tokens, *src_requests, *dst_requests, n, b, size, pad_row),
              {"SLOTS": slots, "BLOCK": BLOCK, "BLOCK_R": triton.next_power_of_2(slots)})


def stage_extend_inputs_native(src_tokens, src_requests, dst_tokens, dst_requests,
                               pad_row: int) -> None:
    """The same with torch ops (the reference, and the CPU path)."""
    n, b = src_tokens[0].shape[0], src_requests[0].shape[0]
    size, slots = dst_tokens[0].shape[0], dst_requests[0].shape[0]
    for src, dst in zip(src_tokens, dst_tokens):
        dst[:n].copy_(src)
        dst[n:].zero_()
    rows, prefix, lens, starts, last = dst_requests
    for src, dst in zip(src_requests, dst_requests):
        dst[:b].copy_(src)
    rows[b:].fill_(pad_row)
    prefix[b:].zero_()
    lens[b:].zero_()
    starts[b:].fill_(size)
    lens[slots - 1] = size - n
    starts[slots - 1] = n
    torch.add(starts, lens - 1, out=last)


__all__ = ["stage_extend_inputs", "stage_extend_inputs_native"]
