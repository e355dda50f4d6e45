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

from tessera.attention.torch_native import TorchNativeAttentionBackend
from tessera.attention.triton import TritonAttentionBackend
from tessera.attention.triton_ops import (
    decode_attention,
    decode_counters_shape,
    decode_workspace_shape,
    extend_attention,
    store_kv,
)
from tessera.cache.kv_pool import MHAKVPool, ReqToTokenPool
from tessera.cache.spec import MHASpec
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.ops.triton.interpreter import patch_for_numpy_2_4

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
gpu = pytest.mark.gpu


if not HAS_CUDA:
    patch_for_numpy_2_4()  # Triton 3.6's interpreter vs numpy >= 2.4 (see that module)


class Case:
    """One batch on two identical KV pools: one for the triton backend, one for the reference."""

    def __init__(self, prefix_lens: list[int], extend_lens: list[int], *, num_kv_heads: int,
                 group: int, head_dim: int, dtype: torch.dtype, mode: ForwardMode,
                 pad_rows: int = 0, seed: int = 0, device: str = DEVICE,
                 max_context: int | None = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        rng = random.Random(seed)
        self.num_heads, self.head_dim, self.dtype = num_kv_heads * group, head_dim, dtype
        self.scaling = head_dim ** -0.5
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        max_context = max_context or max(seq_lens + [1])
        num_slots = sum(max(s, 1) for s in seq_lens) + max_context + 8
        pools = [MHAKVPool(MHASpec(1, num_kv_heads, head_dim, dtype), num_slots, device)
                 for _ in range(2)]
        cache_shape = pools[0].k_buffers[0].shape
        k_init = torch.randn(cache_shape, generator=gen).to(dtype)
        v_init = torch.randn(cache_shape, generator=gen).to(dtype)
        for pool in pools:
            pool.k_buffers[0].copy_(k_init)
            pool.v_buffers[0].copy_(v_init)
        self.table = ReqToTokenPool(len(seq_lens) + 3, max_context, device)
        # scattered rows and slots: the kernels must follow req_to_token, not assume contiguity
        rows = rng.sample(range(self.table.max_reqs), len(seq_lens))
        free = rng.sample(range(1, num_slots + 1), num_slots)
        new_slots = []
        for row, prefix, seq_len in zip(rows, prefix_lens, seq_lens):
            slots = [free.pop() for _ in range(seq_len)]
            self.table.write(row, 0, torch.tensor(slots))
            new_slots += slots[prefix:]
        self.num_real = sum(extend_lens)
        self.batch = ForwardBatch.build(mode, [0] * self.num_real, rows, prefix_lens, extend_lens,
                                        torch.tensor(new_slots, dtype=torch.int64), device)
        tokens = self.num_real + pad_rows
        self.q = torch.randn(tokens, self.num_heads, head_dim, generator=gen).to(dtype).to(device)
        self.k = torch.randn(tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
        self.v = torch.randn(tokens, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
        self.triton = TritonAttentionBackend(pools[0], self.table, self.num_heads)
        self.reference = TorchNativeAttentionBackend(pools[1], self.table, self.num_heads)

    def run(self, backend) -> torch.Tensor:
        out = torch.full_like(self.q, float("nan"))  # rows the backend forgets stay NaN
        backend.init_forward_metadata(self.batch)
        backend.forward(self.q, self.k, self.v, out, 0, self.scaling, self.batch)
        return out

    def check(self, atol: float, rtol: float = 0.0) -> torch.Tensor:
        got = self.run(self.triton)
        want = self.run(self.reference)
        torch.testing.assert_close(got[:self.num_real].float(), want[:self.num_real].float(),
                                   atol=atol, rtol=rtol)
        assert torch.all(got[self.num_real:] == 0), "padded rows must be zeroed"
        for name in ("k_buffers", "v_buffers"):
            a = getattr(self.triton.kv_pool, name)[0]
            b = getattr(self.reference.kv_pool, name)[0]
            assert torch.equal(a, b), f"{name}: new K/V written differently"
        return got


def _tol(dtype: torch.dtype) -> float:
    return {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]


def _random_lens(rng: random.Random, count: int, max_prefix: int, max_extend: int
                 ) -> tuple[list[int], list[int]]:
    prefix = [0, 0] + [rng.randint(0, max_prefix) for _ in range(count - 2)]
    extend = [1, rng.randint(1, max_extend)] + [rng.randint(1, max_extend) for _ in range(count - 2)]
    return prefix, extend


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
    for prefix, extend in [([0, 5], [30, 2]), ([12], [33]), ([3, 0, 7], [20, 1, 11]),
                           ([0, 5], [30, 2]), ([9], [1])]:
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
        assert launcher.direct_launches == 0 and launcher.jit_launches == 5


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
