"""Triton attention backend vs the torch_native reference, part 2: the prepared extend calls and
the decode workspace of the piecewise replay plans, real sizes and CUDA graphs on the GPU, and the
staging kernel of the whole-forward extend graphs. Part 1 (test_triton_attention.py) has the
kernels at small shapes; the shared cases are in attention_cases.py.
"""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from attention_cases import DEVICE, HAS_CUDA, Case, _random_lens, _tol, gpu  # noqa: F401

from tessera.attention.torch_native import TorchNativeAttentionBackend
from tessera.attention.triton import TritonAttentionBackend
from tessera.cache.kv_pool import MHAKVPool, ReqToTokenPool
from tessera.cache.spec import MHASpec
from tessera.forward.batch import ForwardBatch, ForwardMode


class _TwoBackends:
    """The triton backend and the torch_native reference on two one-layer KV pools (random
    contents) sharing one request table: batches placed at scattered rows and slots, each run on
    the same cache contents (the prepared and the staged extend tests)."""

    def __init__(self, gen: torch.Generator, heads: int, kv_heads: int, dim: int,
                 slots: int = 300) -> None:
        self.slots = slots
        self.pools = [MHAKVPool(MHASpec(1, kv_heads, dim, torch.float32), slots, DEVICE)
                      for _ in range(2)]
        for name in ("k_buffers", "v_buffers"):
            getattr(self.pools[1], name)[0].copy_(
                torch.randn(slots + 1, kv_heads, dim, generator=gen))
        self.table = ReqToTokenPool(6, 64, DEVICE)
        self.triton = TritonAttentionBackend(self.pools[0], self.table, heads)
        self.reference = TorchNativeAttentionBackend(self.pools[1], self.table, heads)

    def batch(self, rng: random.Random, prefix: list[int], extend: list[int],
              rows_below: int) -> ForwardBatch:
        """An EXTEND batch of requests at random rows < rows_below and random slots (prefix and
        new ones written to the table), the triton pool reset to the reference's contents."""
        for name in ("k_buffers", "v_buffers"):
            getattr(self.pools[0], name)[0].copy_(getattr(self.pools[1], name)[0])
        rows = rng.sample(range(rows_below), len(prefix))
        free = rng.sample(range(1, self.slots + 1), self.slots)
        new_slots = []
        for row, p, e in zip(rows, prefix, extend):
            row_slots = [free.pop() for _ in range(p + e)]
            self.table.write(row, 0, torch.tensor(row_slots))
            new_slots += row_slots[p:]
        return ForwardBatch.build(ForwardMode.EXTEND, [0] * sum(extend), rows, prefix, extend,
                                  torch.tensor(new_slots, dtype=torch.int64), DEVICE)


def test_prepared_extend_equals_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """AttentionBackend.prepare (what a replay plan calls per layer): the same q/k/v/out tensors
    every call, new batch metadata each time (other sizes, and metadata tensors at other
    alignments), the output and cache of the reference. On the GPU the launches after the first
    go straight to the compiled kernel, each checked against the JIT's own choice (verify)."""
    from tessera.ops.triton import launch

    gen = torch.Generator().manual_seed(0)
    rng = random.Random(0)
    heads, kv_heads, dim, tokens = 4, 2, 64, 40
    both = _TwoBackends(gen, heads, kv_heads, dim)
    pools, triton_backend, reference = both.pools, both.triton, both.reference
    q = torch.empty(tokens, heads, dim, device=DEVICE)
    k, v = (torch.empty(tokens, kv_heads, dim, device=DEVICE) for _ in range(2))
    out = torch.empty_like(q)
    monkeypatch.setattr(launch, "VERIFY", True)  # every direct launch checked
    run = triton_backend.prepare(q, k, v, out, 0, heads ** -0.5)
    # the last batch ends with decoding requests: the prepared call runs them through the
    # decode kernel too
    for prefix, extend in [([0, 5], [30, 2]), ([12], [33]), ([3, 0, 7], [20, 1, 11]),
                           ([0, 5], [30, 2]), ([9], [1]), ([0, 40, 6], [25, 1, 1])]:
        batch = both.batch(rng, prefix, extend, both.table.max_reqs)
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, generator=gen))
        out.fill_(float("nan"))
        triton_backend.init_forward_metadata(batch)
        run(batch)
        want = torch.full_like(out, float("nan"))
        reference.init_forward_metadata(batch)
        reference.forward(q, k, v, want, 0, heads ** -0.5, batch)
        n = sum(extend)
        torch.testing.assert_close(out[:n], want[:n], atol=2e-5, rtol=0)
        assert torch.all(out[n:] == 0), "padded rows must be zeroed"
        for name in ("k_buffers", "v_buffers"):
            assert torch.equal(getattr(pools[0], name)[0][1:], getattr(pools[1], name)[0][1:])
    launcher = run.launch.launcher
    if HAS_CUDA:  # batches 1 and 4 share metadata sizes: at least one direct launch
        assert launcher.direct_launches >= 1
    else:  # the interpreter has no compiled launcher
        assert launcher.direct_launches == 0 and launcher.jit_launches == 6


def test_decode_workspace_is_allocated_once() -> None:
    """Graphs keep the workspace address: every batch size must reuse the same buffer."""
    case = Case([3], [1], num_kv_heads=2, group=4, head_dim=64, dtype=torch.float32,
                mode=ForwardMode.DECODE)
    backend = case.triton
    ptr = backend._part_out.data_ptr()
    splits = [backend.decode_num_splits(b) for b in range(1, 300)]
    assert splits == sorted(splits, reverse=True) and splits[-1] == 1
    for batch_size in (1, 2, 5, 64, 299):
        batch = ForwardBatch.build(ForwardMode.DECODE, [0] * batch_size, [0] * batch_size,
                                   [0] * batch_size, [1] * batch_size,
                                   torch.zeros(batch_size, dtype=torch.int64), DEVICE)
        backend.init_forward_metadata(batch)
        meta = batch.attn_metadata
        if meta.part_out is not None:
            assert meta.part_out.data_ptr() == ptr
    assert backend._part_out.data_ptr() == ptr


# ---- real sizes on the GPU --------------------------------------------------------------------
CONTEXTS = [1, 7, 100, 1000, 4096, 32768]


@gpu  # tests/conftest.py skips these without CUDA
@pytest.mark.parametrize("group,head_dim", [(4, 128), (1, 64), (8, 256)])
def test_gpu_decode_bf16_long_contexts(group: int, head_dim: int) -> None:
    for batch_size in (1, 6, 160):  # 160: one split per request, output written by stage 1
        rng = random.Random(batch_size)
        seq_lens = [CONTEXTS[i % len(CONTEXTS)] if batch_size < 100 else rng.randint(1, 2000)
                    for i in range(batch_size)]
        if batch_size == 1:
            seq_lens = [32768]
        case = Case([s - 1 for s in seq_lens], [1] * batch_size, num_kv_heads=8 // group * 2,
                    group=group, head_dim=head_dim, dtype=torch.bfloat16,
                    mode=ForwardMode.DECODE, seed=batch_size)
        case.check(atol=2e-2, rtol=2e-2)


@gpu  # tests/conftest.py skips these without CUDA
@pytest.mark.parametrize("pdl", [False, True])
@pytest.mark.parametrize("group,head_dim", [(4, 128), (1, 64), (8, 256)])
def test_gpu_extend_bf16_mixes(group: int, head_dim: int, pdl: bool) -> None:
    """With programmatic dependent launch the extend kernel waits for its predecessors: same
    results."""
    from tessera.ops.triton import pdl as pdl_switch

    pdl_switch.set_enabled(pdl)
    try:
        prefix = [0, 0, 32768 - 1000, 4096, 1000, 7, 0]
        extend = [4096, 1, 1000, 1, 300, 100, 7]
        case = Case(prefix, extend, num_kv_heads=8 // group * 2, group=group,
                    head_dim=head_dim, dtype=torch.bfloat16, mode=ForwardMode.EXTEND,
                    pad_rows=9)
        case.check(atol=2e-2, rtol=2e-2)
    finally:
        pdl_switch.set_enabled(False)


@gpu  # tests/conftest.py skips these without CUDA
@pytest.mark.parametrize("pdl", [False, True])
def test_gpu_decode_cuda_graph_replay_equals_eager(pdl: bool) -> None:
    """Capture with short contexts, replay with long ones: nothing about lengths is baked in.
    With programmatic dependent launch (tessera.ops.triton.pdl) the kernel waits for its
    predecessors and the results are the same."""
    from tessera.ops.triton import pdl as pdl_switch

    pdl_switch.set_enabled(pdl)
    try:
        _decode_graph_replay_equals_eager()
    finally:
        pdl_switch.set_enabled(False)


def _decode_graph_replay_equals_eager() -> None:
    long_lens = [32768, 4096, 1000, 100, 7]
    padded = 8  # 3 padding requests: row 0, slot 0, seq_len 1
    case = Case([s - 1 for s in long_lens], [1] * 5, num_kv_heads=8, group=4, head_dim=128,
                dtype=torch.bfloat16, mode=ForwardMode.DECODE, max_context=32768)
    rows = case.batch.req_pool_indices.tolist() + [0] * 3
    static = ForwardBatch.build(ForwardMode.DECODE, [0] * padded, rows, [0] * padded,
                                [1] * padded, torch.zeros(padded, dtype=torch.int64), DEVICE)
    q = torch.zeros(padded, case.num_heads, case.head_dim, dtype=torch.bfloat16, device=DEVICE)
    k = torch.zeros(padded, 8, case.head_dim, dtype=torch.bfloat16, device=DEVICE)
    v, out = torch.zeros_like(k), torch.zeros_like(q)
    backend = case.triton

    def step() -> None:
        backend.forward(q, k, v, out, 0, case.scaling, static)

    backend.init_forward_metadata(static)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    # the real step: 5 requests at their long contexts, 3 padding rows
    static.seq_lens.copy_(torch.tensor(long_lens + [1] * 3, dtype=torch.int32))
    static.out_cache_loc.copy_(torch.cat([case.batch.out_cache_loc,
                                          torch.zeros(3, dtype=torch.int64, device=DEVICE)]))
    for dst, src in ((q, case.q), (k, case.k), (v, case.v)):
        dst.zero_()
        dst[:5].copy_(src)
    graph.replay()
    torch.cuda.synchronize()
    replayed = out[:5].clone()
    assert torch.isfinite(out).all()

    step()  # the same step eagerly (rewrites identical K/V)
    assert torch.equal(out[:5], replayed)
    want = case.run(case.reference)
    torch.testing.assert_close(replayed.float(), want.float(), atol=2e-2, rtol=2e-2)


# ---- whole-forward extend graphs: staged batches with a padding request ---------------------------
def _static_extend_batch(size: int, slots: int) -> tuple[ForwardBatch, torch.Tensor]:
    """A whole-forward graph's fixed batch (PiecewiseGraphRunner._full_batch's layout) and its
    slots' last tokens (the logit rows)."""
    tokens = [torch.zeros(size, dtype=torch.int64, device=DEVICE) for _ in range(3)]
    rows = torch.zeros(slots, dtype=torch.int64, device=DEVICE)
    lens = torch.zeros(5, slots, dtype=torch.int32, device=DEVICE)
    return ForwardBatch(ForwardMode.EXTEND, *tokens, rows, lens[4], lens[0], lens[1], lens[2],
                        [0] * slots, [0] * slots, [0] * slots, pad_request=True), lens[3]


def _stage(batch: ForwardBatch, static: tuple[ForwardBatch, torch.Tensor], pad_row: int,
           use_triton: bool | None = None) -> None:
    from tessera.ops.triton.stage import stage_extend_inputs

    fixed, last = static
    stage_extend_inputs((batch.input_ids, batch.positions, batch.out_cache_loc),
                        (batch.req_pool_indices, batch.extend_prefix_lens,
                         batch.extend_seq_lens, batch.extend_start_loc),
                        (fixed.input_ids, fixed.positions, fixed.out_cache_loc),
                        (fixed.req_pool_indices, fixed.extend_prefix_lens,
                         fixed.extend_seq_lens, fixed.extend_start_loc, last), pad_row,
                        use_triton)


@pytest.mark.parametrize("max_requests", [1, 3])
def test_staged_graph_batch_equals_reference(max_requests: int) -> None:
    """The attention of a whole-forward extend graph: batches of up to max_requests requests
    staged into one fixed batch (the last request slot the padding up to the graph's size,
    ForwardBatch.pad_request) give the reference's output on the real tokens, zeros on the
    padding, the reference's cache (the padding stores nothing, not even in the dump slot) and
    no req_to_token entries for the padding."""
    gen = torch.Generator().manual_seed(1)
    rng = random.Random(1)
    heads, kv_heads, dim, size = 4, 2, 64, 48
    both = _TwoBackends(gen, heads, kv_heads, dim)
    pools, table, triton_backend, reference = both.pools, both.table, both.triton, both.reference
    pad_row = table.max_reqs - 1
    static, last = _static_extend_batch(size, max_requests + 1)
    q = torch.empty(size, heads, dim, device=DEVICE)
    k, v = (torch.empty(size, kv_heads, dim, device=DEVICE) for _ in range(2))
    batches = [([0], [48]), ([5], [30]), ([9], [1])]
    if max_requests >= 3:
        batches += [([3, 0, 7], [20, 1, 11]), ([0, 2], [1, 1])]
    for prefix, extend in batches:
        batch = both.batch(rng, prefix, extend, pad_row)  # the padding row stays untouched
        _stage(batch, (static, last), pad_row)
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, generator=gen))
        out = torch.full_like(q, float("nan"))
        triton_backend.init_forward_metadata(static)
        triton_backend.forward(q, k, v, out, 0, dim ** -0.5, static)
        want = torch.full_like(q, float("nan"))
        reference.init_forward_metadata(batch)
        reference.forward(q, k, v, want, 0, dim ** -0.5, batch)
        n = sum(extend)
        torch.testing.assert_close(out[:n], want[:n], atol=2e-5, rtol=0)
        assert torch.all(out[n:] == 0), "the padding request's rows must be zeroed"
        for name in ("k_buffers", "v_buffers"):
            assert torch.equal(getattr(pools[0], name)[0], getattr(pools[1], name)[0])
        assert torch.all(table.req_to_token[pad_row] == 0), "the padding records nothing"


@pytest.mark.parametrize("n,b,slots", [(0, 0, 4), (5, 1, 2), (16, 2, 4), (13, 3, 4), (7, 1, 2)])
def test_stage_kernel_equals_torch(n: int, b: int, slots: int,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """stage_extend_inputs' one launch (Triton; interpreted on the CPU) writes what its torch
    version does: tokens copied then zeroed to the size, requests copied, empty slots, the
    padding request last, every slot's last token. On the GPU every direct launch is checked against the JIT's choice
    (two slot counts in one process: the launcher's key must tell them apart)."""
    from tessera.ops.triton import stage

    monkeypatch.setattr(stage._launcher, "verify", True)
    gen = torch.Generator().manual_seed(n + b)
    size = 16
    ids, pos, loc = (torch.randint(1, 1000, (n,), generator=gen).to(DEVICE) for _ in range(3))
    rows = torch.randint(0, 6, (b,), generator=gen).to(DEVICE)
    prefix, lens, starts = (torch.randint(0, 50, (b,), generator=gen, dtype=torch.int32)
                            .to(DEVICE) for _ in range(3))
    batch = ForwardBatch(ForwardMode.EXTEND, ids, pos, loc, rows, prefix, prefix, lens, starts,
                         [0] * b, [0] * b, [0] * b)
    staged = [_static_extend_batch(size, slots) for _ in range(2)]
    for static, last in staged:  # stale contents the staging must overwrite
        for t in (static.input_ids, static.positions, static.out_cache_loc,
                  static.req_pool_indices, static.extend_start_loc, last):
            t.fill_(77)
    _stage(batch, staged[0], pad_row=5, use_triton=True)
    _stage(batch, staged[1], pad_row=5, use_triton=False)
    (kernel, kernel_last), (native, native_last) = staged
    for name in ("input_ids", "positions", "out_cache_loc", "req_pool_indices",
                 "extend_prefix_lens", "extend_seq_lens", "extend_start_loc"):
        assert torch.equal(getattr(kernel, name), getattr(native, name)), name
    assert torch.equal(kernel_last, native_last)
    assert native.extend_seq_lens[-1] == size - n and native.extend_start_loc[-1] == n
    assert native.out_cache_loc[n:].eq(0).all() and native.req_pool_indices[-1] == 5
    # the logit rows: each request's last token, then size - 1 (a valid row) for the rest
    assert native_last.tolist() == [s + e - 1 for s, e in zip(starts.tolist(), lens.tolist())] + [
        size - 1] * (slots - b)
