"""Triton attention backend vs the torch_native reference.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py
before the kernels are imported: Triton reads it when @triton.jit decorates). Small shapes only
there; the interpreter's tl.dot mis-multiplies bf16, so bf16 attention is covered by the GPU tests.
With CUDA the same small tests run compiled, and the `gpu` tests add real sizes, bf16 and CUDA
graphs.
"""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from attention_cases import DEVICE, HAS_CUDA, Case, _random_lens, _tol, gpu  # noqa: F401

from tessera.attention.triton import TritonAttentionBackend
from tessera.attention.triton_ops import (
    decode_attention,
    decode_counters_shape,
    decode_workspace_shape,
    extend_attention,
    store_kv,
)
from tessera.forward.batch import ForwardMode

# ---- small shapes (interpreter on CPU) ------------------------------------------------------------
SHAPES = [(1, 64), (4, 128), (8, 256), (8, 64)]  # (query heads per KV head, head_dim)


@pytest.mark.parametrize("group,head_dim", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_extend_matches_reference(group: int, head_dim: int, dtype: torch.dtype) -> None:
    rng = random.Random(group * 1000 + head_dim)
    prefix, extend = _random_lens(rng, 4, max_prefix=90, max_extend=140)
    case = Case(prefix, extend, num_kv_heads=2, group=group, head_dim=head_dim, dtype=dtype,
                mode=ForwardMode.EXTEND, pad_rows=3, seed=group + head_dim)
    case.check(_tol(dtype))


@pytest.mark.parametrize("group,head_dim", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_decode_matches_reference(group: int, head_dim: int, dtype: torch.dtype) -> None:
    rng = random.Random(group + head_dim)
    seq_lens = [1, 2, rng.randint(3, 300), rng.randint(3, 300)]
    case = Case([s - 1 for s in seq_lens], [1] * 4, num_kv_heads=2, group=group,
                head_dim=head_dim, dtype=dtype, mode=ForwardMode.DECODE, seed=head_dim)
    case.check(_tol(dtype))


def test_decode_single_request_uses_splits() -> None:
    """A lone request gets several splits through the backend's own policy."""
    case = Case([399], [1], num_kv_heads=2, group=4, head_dim=64, dtype=torch.float32,
                mode=ForwardMode.DECODE)
    assert case.triton.decode_num_splits(1) > 1
    case.check(_tol(torch.float32))


def test_mixed_extend_with_decoding_requests() -> None:
    """Chunked prefill next to decoding requests: those come as extend len 1 on a long prefix."""
    case = Case([0, 150, 33, 1], [40, 1, 1, 17], num_kv_heads=2, group=4, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=5)
    case.check(_tol(torch.float32))


@pytest.mark.parametrize("prefix_lens,extend_lens", [
    ([0, 20, 150, 33, 400], [40, 17, 1, 1, 1]),  # a chunk, then three decoding requests
    ([5, 299], [60, 1]),                           # one decoding request: several splits
])
def test_mixed_batch_runs_its_decoding_requests_through_the_decode_kernel(
        prefix_lens: list[int], extend_lens: list[int]) -> None:
    """The one-token requests after the prefill chunks of a mixed batch go to the decode kernel
    (the extend kernel would give each a whole query tile per head): same output and K/V as
    the reference, and at layer 0 their req_to_token entries written as the extend launch
    writes its own (writes_extend_slots)."""
    case = Case(prefix_lens, extend_lens, num_kv_heads=2, group=4, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=3)
    fb, table = case.batch, case.table.req_to_token
    want_table = table.clone()
    for row, p, e in zip(fb.req_pool_indices.tolist(), prefix_lens, extend_lens):
        table[row, p:p + e] = 0  # allocated by the scheduler, not written down yet
    case.triton.init_forward_metadata(fb)
    mixed = fb.attn_metadata.decode
    num_decode = extend_lens[::-1].index(next(n for n in extend_lens[::-1] if n != 1))
    assert mixed is not None and mixed.loc.shape[0] == num_decode
    assert mixed.first_row == sum(extend_lens) - num_decode
    if num_decode == 1:
        assert mixed.meta.num_splits > 1
    case.check(_tol(torch.float32))  # the backend at layer 0, then the reference
    assert torch.equal(table, want_table)


@pytest.mark.parametrize("fused_store", [False, True])
@pytest.mark.parametrize("num_splits", [1, 3, 8])
def test_decode_kernel_splits_and_empty_rows(num_splits: int, fused_store: bool) -> None:
    """Splits of 16 keys exercise the in-kernel split merge; seq_len 0 rows (padding) must give
    zeros. With fused_store the kernel also writes the new K/V and takes the newest key from k/v
    instead of the cache; the last request has no slot (N < B) and reads everything cached."""
    case = Case([0, 4, 70, 130, 0, 40], [1] * 6, num_kv_heads=2, group=4, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.DECODE, seed=num_splits)
    want = case.run(case.reference)  # the reference pool now holds every new K/V
    seq_lens = case.batch.seq_lens.clone()
    seq_lens[4] = 0
    kv, loc = case.triton.kv_pool, case.batch.out_cache_loc
    out = torch.full_like(case.q, float("nan"))
    workspace = (None, None)
    counters = None
    if num_splits > 1:
        shapes = decode_workspace_shape(6, case.num_heads, num_splits, case.head_dim)
        workspace = tuple(torch.full(s, float("nan"), device=DEVICE) for s in shapes)
        counters = torch.zeros(decode_counters_shape(6, case.num_heads, 2), dtype=torch.int32,
                               device=DEVICE)
    if fused_store:
        # request 5's new K/V is stored up front, the others by the kernel
        store_kv(case.k[5:], case.v[5:], kv.k_buffers[0], kv.v_buffers[0], loc[5:])
        new = {"k_new": case.k[:5], "v_new": case.v[:5], "new_loc": loc[:5]}
    else:
        store_kv(case.k, case.v, kv.k_buffers[0], kv.v_buffers[0], loc)
        new = {}
    for _ in range(2):  # twice: the counters must be back at 0 after a launch
        decode_attention(case.q, kv.k_buffers[0], kv.v_buffers[0], out,
                         case.table.req_to_token, case.batch.req_pool_indices, seq_lens,
                         case.scaling, *workspace, min_split_len=16, block_n=16,
                         counters=counters, **new)
        if counters is not None:
            assert torch.all(counters == 0)
    rows = [0, 1, 2, 3, 5]
    torch.testing.assert_close(out[rows], want[rows], atol=2e-5, rtol=0)
    assert torch.all(out[4] == 0)
    for name in ("k_buffers", "v_buffers"):
        got, ref = getattr(kv, name)[0], getattr(case.reference.kv_pool, name)[0]
        assert torch.equal(got[loc[:4]], ref[loc[:4]]) and torch.equal(got[loc[5]], ref[loc[5]])


def _use_fused_qkv_views(case: Case) -> None:
    """Make the case's k/v strided views of one fused QKV tensor, as the model hands them over."""
    qkv = torch.cat([case.q.flatten(1), case.k.flatten(1), case.v.flatten(1)], dim=1)
    q_size, kv_size = case.q[0].numel(), case.k[0].numel()
    case.k = qkv[:, q_size:q_size + kv_size].view(case.k.shape)
    case.v = qkv[:, q_size + kv_size:].view(case.v.shape)
    assert not case.k.is_contiguous() and not case.v.is_contiguous()


def test_decode_new_key_from_strided_views() -> None:
    """The backend hands decode the k/v views of a fused QKV projection (no copies)."""
    case = Case([0, 9, 200], [1] * 3, num_kv_heads=2, group=2, head_dim=32,
                dtype=torch.float32, mode=ForwardMode.DECODE, seed=3)
    _use_fused_qkv_views(case)
    case.check(_tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group,head_dim,fused_qkv", [(4, 64, True), (1, 32, False),
                                                     (8, 128, False)])
def test_decode_fused_rope_equals_rotary_then_attention(group: int, head_dim: int,
                                                        fused_qkv: bool, dtype: torch.dtype
                                                        ) -> None:
    """rope=(positions, cos_sin_cache): the decode kernel rotates q and the new k itself. Same
    output as the native rotary followed by the reference attention, and the cache receives the
    rotated k bit for bit in 16-bit dtypes (the kernel rounds as the native op does)."""
    from tessera.layers.rotary import RotaryEmbedding

    case = Case([0, 9, 200, 70, 1], [1] * 5, num_kv_heads=2, group=group, head_dim=head_dim,
                dtype=dtype, mode=ForwardMode.DECODE, seed=head_dim)
    if fused_qkv:
        _use_fused_qkv_views(case)
    rotary = RotaryEmbedding(head_dim, 4096, 10000.0, force_native=True).to(DEVICE)
    positions = case.batch.positions
    q, k = case.q, case.k
    case.q, case.k = rotary(positions, q, k)  # the reference gets rotated inputs
    want = case.run(case.reference)
    case.q, case.k = q, k
    out = torch.full_like(q, float("nan"))
    case.triton.init_forward_metadata(case.batch)
    case.triton.forward(q, k, case.v, out, 0, case.scaling, case.batch,
                        rope=(positions, rotary.cos_sin_cache))
    torch.testing.assert_close(out[:case.num_real].float(), want[:case.num_real].float(),
                               atol=_tol(dtype), rtol=0)
    for name in ("k_buffers", "v_buffers"):
        got, ref = getattr(case.triton.kv_pool, name)[0], getattr(case.reference.kv_pool, name)[0]
        if HAS_CUDA:
            # compiled, x1 * cos - x2 * sin may contract into an FMA: 1 ulp apart in float32,
            # which the 16-bit rounding mostly hides but can tip across a rounding boundary (1
            # ulp of the 16-bit type; the interpreter does not contract: bit for bit there)
            tol = 1e-6 if dtype == torch.float32 else torch.finfo(dtype).eps
            torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
        else:
            assert torch.equal(got, ref), name


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (32, 16)])
@pytest.mark.parametrize("fused_store", [False, True])
def test_extend_kernel_small_tiles(block_m: int, block_n: int, fused_store: bool) -> None:
    """Many query and key tiles per request: the shared-prefix and diagonal loops both iterate;
    the new K/V stored before the launch (store_kv) or by it (k_new/v_new/new_loc)."""
    case = Case([0, 45, 3], [70, 33, 1], num_kv_heads=2, group=4, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=5)
    want = case.run(case.reference)
    kv, fb = case.triton.kv_pool, case.batch
    out = torch.zeros_like(case.q)
    loc = torch.cat([fb.out_cache_loc, torch.zeros(5, dtype=torch.int64, device=DEVICE)])
    new_kv = {}
    if fused_store:
        new_kv = {"k_new": case.k, "v_new": case.v, "new_loc": loc}  # padding rows: not stored
    else:
        store_kv(case.k[:case.num_real], case.v[:case.num_real], kv.k_buffers[0],
                 kv.v_buffers[0], fb.out_cache_loc)
    extend_attention(case.q, kv.k_buffers[0], kv.v_buffers[0], out, case.table.req_to_token,
                     fb.req_pool_indices, fb.extend_prefix_lens, fb.extend_seq_lens,
                     fb.extend_start_loc, fb.max_extend_len, case.scaling, block_m=block_m,
                     block_n=block_n, **new_kv)
    torch.testing.assert_close(out[:case.num_real], want[:case.num_real], atol=2e-5, rtol=0)
    for name in ("k_buffers", "v_buffers"):  # the same cache either way (slot 0 untouched)
        assert torch.equal(getattr(kv, name)[0], getattr(case.reference.kv_pool, name)[0])


def test_extend_tma_path_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """The TMA path: automatic only where tma_possible says so (never off CUDA or in the
    interpreter), from TMA_MIN_TOKENS new tokens and with the automatic tiles (a given block_m
    keeps its pointer-path tile); tma=True forces it for every launch."""
    import importlib

    # the module (the package re-exports its function of the same name)
    ea = importlib.import_module("tessera.attention.triton_ops.extend_attention")
    assert ea.TMA_TILE[0] % ea.TMA_TILE[1] == 0
    x = torch.zeros(8, 2, 64)
    assert not ea.tma_possible(torch.device("cpu"), 64, x, x)
    case = Case([0], [40], num_kv_heads=2, group=2, head_dim=64, dtype=torch.float32,
                mode=ForwardMode.EXTEND)
    kv = case.triton.kv_pool

    def launch(**kwargs):
        return ea.ExtendAttention(case.q, kv.k_buffers[0], kv.v_buffers[0],
                                  torch.zeros_like(case.q), case.table.req_to_token,
                                  case.scaling, k_new=case.k, v_new=case.v, **kwargs)

    # automatic: where tma_possible holds (an H200; never in the interpreter)
    assert launch().tma == ea.tma_possible(case.q.device, 64, case.q, case.k, case.v)
    monkeypatch.setattr(ea, "tma_possible", lambda *args: True)  # as on an H200
    auto = launch()
    assert not auto.tile(ea.TMA_MIN_TOKENS - 1)[1]
    block_m, tma, kwargs = auto.tile(ea.TMA_MIN_TOKENS)
    assert tma and (block_m, kwargs["BLOCK_N"]) == ea.TMA_TILE[:2]
    assert not launch(block_m=64).tile(4 * ea.TMA_MIN_TOKENS)[1]
    assert not launch(tma=False).tile(4 * ea.TMA_MIN_TOKENS)[1]
    forced = launch(tma=True, block_m=64)
    assert forced.tile(16)[:2] == (64, True)


def test_extend_tile_choice() -> None:
    """A quarter of the longest request's new tokens, between 16 rows and the largest tile."""
    from tessera.attention.triton_ops.extend_attention import choose_tile, extend_tiles

    assert [t[0] for t in extend_tiles(128)] == [128, 64, 32, 16]
    assert extend_tiles(256)[0][0] == 64 and extend_tiles(64)[0][:3] == (128, 64, 4)
    assert [choose_tile(128, n)[0] for n in (1, 16, 64, 100, 256, 1024, 8192)] == [
        16, 16, 16, 32, 64, 128, 128]
    assert choose_tile(128, 16) == (16, 32, 8, 2)  # the H200 sweeps' settings
    assert choose_tile(128, 256) == (64, 128, 8, 2)
    assert choose_tile(256, 8192)[0] == 64 and choose_tile(64, 40)[0] == 16


@pytest.mark.parametrize("prefix_lens,extend_lens",
                         [([0], [16]), ([5], [60]), ([0, 45, 3], [70, 33, 1])])
def test_extend_auto_tile_matches_reference(prefix_lens: list[int],
                                            extend_lens: list[int]) -> None:
    """Whatever tile the longest request picks, the output and the stored K/V equal the
    reference."""
    from tessera.attention.triton_ops.extend_attention import ExtendAttention

    case = Case(prefix_lens, extend_lens, num_kv_heads=2, group=4, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=3)
    want = case.run(case.reference)
    kv, fb = case.triton.kv_pool, case.batch
    out = torch.zeros_like(case.q)
    loc = torch.cat([fb.out_cache_loc, torch.zeros(3, dtype=torch.int64, device=DEVICE)])
    launch = ExtendAttention(case.q, kv.k_buffers[0], kv.v_buffers[0], out,
                             case.table.req_to_token, case.scaling, k_new=case.k, v_new=case.v)
    launch(fb.req_pool_indices, fb.extend_prefix_lens, fb.extend_seq_lens, fb.extend_start_loc,
           fb.max_extend_len, loc)
    assert launch.tile(fb.max_extend_len)[0] == {16: 16, 60: 16, 70: 32}[fb.max_extend_len]
    torch.testing.assert_close(out[:case.num_real], want[:case.num_real], atol=2e-5, rtol=0)
    for name in ("k_buffers", "v_buffers"):
        assert torch.equal(getattr(kv, name)[0], getattr(case.reference.kv_pool, name)[0])


def test_extend_records_the_new_slots_in_req_to_token() -> None:
    """writes_extend_slots: layer 0's extend launch writes req_to_token[row, prefix + i] for
    every new token (what ModelRunner.record_slots does), leaving the rest of the table alone;
    without record_slots the launch writes nothing there."""
    from tessera.attention.triton_ops.extend_attention import ExtendAttention

    assert TritonAttentionBackend.support.writes_extend_slots
    case = Case([0, 45, 3], [70, 33, 1], num_kv_heads=2, group=2, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=3)
    table = case.table.req_to_token
    want_table = table.clone()
    fb = case.batch
    for row, p, e in zip(fb.req_pool_indices.tolist(), fb.extend_prefix_lens.tolist(),
                         fb.extend_seq_lens.tolist()):
        table[row, p:p + e] = 0  # as the scheduler leaves them: allocated, not written down
    wiped = table.clone()
    kv = case.triton.kv_pool
    loc = torch.cat([fb.out_cache_loc, torch.zeros(3, dtype=torch.int64, device=DEVICE)])
    ExtendAttention(case.q, kv.k_buffers[0], kv.v_buffers[0], torch.zeros_like(case.q), table,
                    case.scaling, k_new=case.k, v_new=case.v)(
        fb.req_pool_indices, fb.extend_prefix_lens, fb.extend_seq_lens, fb.extend_start_loc,
        fb.max_extend_len, loc)
    assert torch.equal(table, wiped)
    got = case.run(case.triton)  # the backend at layer 0
    assert torch.equal(table, want_table)
    want = case.run(case.reference)
    torch.testing.assert_close(got[:case.num_real], want[:case.num_real], atol=2e-5, rtol=0)


@pytest.mark.parametrize(("block_m", "tma"), [(16, False), (64, False), (64, True)])
def test_extend_tiles_over_whole_and_partial_key_tiles(block_m: int, tma: bool) -> None:
    """The new keys up to the diagonal in one causal loop (tma: through TMA descriptors, an
    unmasked loop below the tile's first query, then the diagonal): the reference's output and
    cache with cached prefixes, runs of whole and partial key tiles, and padding rows, at a small
    and a large query tile."""
    from tessera.attention.triton_ops.extend_attention import ExtendAttention

    case = Case([0, 150, 64, 3], [130, 33, 64, 1], num_kv_heads=2, group=2, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=3)
    want = case.run(case.reference)
    fb, kv = case.batch, case.triton.kv_pool
    loc = torch.cat([fb.out_cache_loc, torch.zeros(3, dtype=torch.int64, device=DEVICE)])
    out = torch.zeros_like(case.q)
    launch = ExtendAttention(case.q, kv.k_buffers[0], kv.v_buffers[0], out,
                             case.table.req_to_token, case.scaling, k_new=case.k, v_new=case.v,
                             block_m=block_m, tma=tma)
    assert launch.tile(fb.max_extend_len)[1] == tma
    launch(fb.req_pool_indices, fb.extend_prefix_lens, fb.extend_seq_lens, fb.extend_start_loc,
           fb.max_extend_len, loc)
    torch.testing.assert_close(out[:case.num_real], want[:case.num_real], atol=2e-5, rtol=0)
    assert torch.equal(kv.k_buffers[0], case.reference.kv_pool.k_buffers[0])


def test_extend_new_kv_from_strided_views() -> None:
    """The backend's extend path with K/V as strided views of a fused QKV projection."""
    case = Case([0, 20, 5], [37, 9, 1], num_kv_heads=2, group=2, head_dim=64,
                dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=2)
    _use_fused_qkv_views(case)
    case.check(_tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_store_kv_strided_views(dtype: torch.dtype) -> None:
    """K/V as strided views of a fused QKV tensor, padding rows aimed at the dump slot 0."""
    tokens, heads, dim = 6, 2, 64
    qkv = torch.randn(tokens, 6 * heads * dim, device=DEVICE).to(dtype)
    k = qkv[:, 4 * heads * dim:5 * heads * dim].view(tokens, heads, dim)
    v = qkv[:, 5 * heads * dim:].view(tokens, heads, dim)
    k_cache = torch.zeros(20, heads, dim, dtype=dtype, device=DEVICE)
    v_cache = torch.zeros_like(k_cache)
    loc = torch.tensor([5, 9, 2, 17, 0, 0], device=DEVICE)
    store_kv(k, v, k_cache, v_cache, loc)
    assert torch.equal(k_cache[loc[:4]], k[:4]) and torch.equal(v_cache[loc[:4]], v[:4])
    untouched = torch.ones(20, dtype=torch.bool)
    untouched[[0, 2, 5, 9, 17]] = False
    assert torch.all(k_cache[untouched.to(DEVICE)] == 0)


