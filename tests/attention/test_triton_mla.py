"""Triton MLA backend (absorbed-form attention over the latent cache) vs a torch reference.

The reference (`reference_mla`) is the definition written out: store the new tokens' latents,
gather each request's latents through req_to_token, softmax(scaling * q·latent) over the causal
range, times the latents' first L dims. Without CUDA the kernels run in Triton's interpreter
(TRITON_INTERPRET=1, tests/conftest.py) at small sizes, float32 and float16 (the interpreter's
tl.dot mis-multiplies bf16); the `gpu` tests add DeepSeek's sizes (L=512, R=64, 16 and 128
heads), bf16 and a CUDA graph.
"""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from attention_cases import DEVICE, HAS_CUDA, gpu  # noqa: F401  (also patches the interpreter)

from tessera.attention import get_attention_backend_class
from tessera.attention.op import attention_op
from tessera.attention.triton_mla import TritonMLABackend
from tessera.attention.triton_ops import mla_decode_attention, mla_extend_attention, store_latent
from tessera.attention.triton_ops.mla_decode import mla_decode_workspace_shape
from tessera.cache.kv_pool import MHAKVPool, MLAKVPool, ReqToTokenPool
from tessera.cache.spec import MHASpec, MLASpec
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.forward.context import set_forward_context


def reference_mla(q: torch.Tensor, k: torch.Tensor, cache: torch.Tensor, table: torch.Tensor,
                  batch: ForwardBatch, scaling: float, kv_lora_rank: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """(out [T, H, L] float32 with zeros past the real tokens, the cache after the store) for
    q [T, H, L + R] and the new latents k [T, 1, L + R] of `batch`."""
    n = sum(batch.extend_seq_lens_cpu)
    cache = cache.clone()
    cache[batch.out_cache_loc[:n]] = k[:n, 0].to(cache.dtype)
    out = torch.zeros(q.shape[0], q.shape[1], kv_lora_rank, dtype=torch.float32,
                      device=q.device)
    start = 0
    for row, prefix, extend in zip(batch.req_pool_indices.tolist(), batch.extend_prefix_lens_cpu,
                                   batch.extend_seq_lens_cpu):
        seq_len = prefix + extend
        latents = cache[table[row, :seq_len].long()].float()  # [S, L + R]
        queries = q[start:start + extend].float()  # [E, H, L + R]
        scores = torch.einsum("ehd,sd->hes", queries, latents) * scaling
        qpos = torch.arange(prefix, seq_len, device=q.device)[:, None]
        visible = torch.arange(seq_len, device=q.device)[None, :] <= qpos  # [E, S]
        probs = scores.masked_fill(~visible, float("-inf")).softmax(-1)
        out[start:start + extend] = torch.einsum("hes,sl->ehl", probs, latents[:, :kv_lora_rank])
        start += extend
    return out, cache


class MLACase:
    """One batch of requests at scattered req_to_token rows and cache slots (the new tokens'
    slots recorded, as the runner does before a forward), a random latent cache, random q and
    new latents k (a strided view of a wider buffer when `strided_k`), T = real tokens +
    pad_rows."""

    def __init__(self, prefix_lens: list[int], extend_lens: list[int], *, heads: int,
                 kv_lora_rank: int, rope_dim: int, dtype: torch.dtype, mode: ForwardMode,
                 pad_rows: int = 0, seed: int = 0, strided_k: bool = False,
                 padding_requests: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        rng = random.Random(seed)
        self.heads, self.kv_lora_rank, self.dtype = heads, kv_lora_rank, dtype
        latent_dim = kv_lora_rank + rope_dim
        self.scaling = (kv_lora_rank // 4 + rope_dim) ** -0.5
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        num_slots = sum(seq_lens) + 16
        self.pool = MLAKVPool(MLASpec(1, kv_lora_rank, rope_dim, dtype), num_slots, DEVICE)
        self.pool.latent_buffers[0].copy_(torch.randn(num_slots + 1, latent_dim, generator=gen))
        self.initial_cache = self.pool.latent_buffers[0].clone()
        self.table = ReqToTokenPool(len(seq_lens) + 3, max(seq_lens) + 1, DEVICE)
        # row 0 stays all zeros: the padding requests' row (its slot 0 is the dump slot)
        rows = rng.sample(range(1, self.table.max_reqs), len(seq_lens))
        free = rng.sample(range(1, num_slots + 1), num_slots)
        new_slots = []
        for row, seq_len in zip(rows, seq_lens):
            self.table.write(row, 0, torch.tensor([free.pop() for _ in range(seq_len)]))
        for row, prefix, seq_len in zip(rows, prefix_lens, seq_lens):
            new_slots += self.table.req_to_token[row, prefix:seq_len].tolist()
        # decode graph padding: row 0, one key (slot 0), new latent stored in slot 0
        rows += [0] * padding_requests
        prefix_lens = list(prefix_lens) + [0] * padding_requests
        extend_lens = list(extend_lens) + [1] * padding_requests
        new_slots += [0] * padding_requests
        self.num_real = sum(extend_lens)
        self.batch = ForwardBatch.build(mode, [0] * self.num_real, rows, prefix_lens,
                                        extend_lens, torch.tensor(new_slots), DEVICE)
        tokens = self.num_real + pad_rows
        self.q = torch.randn(tokens, heads, latent_dim, generator=gen).to(dtype).to(DEVICE)
        k = torch.randn(tokens, 1, latent_dim + (8 if strided_k else 0), generator=gen)
        self.k = k.to(dtype).to(DEVICE)[..., :latent_dim]
        self.padding_requests = padding_requests
        self.backend = TritonMLABackend(self.pool, self.table, heads)

    def run(self, through_op: bool = False) -> torch.Tensor:
        """The backend's output (NaN-filled first: rows it forgets stay NaN)."""
        out = torch.full((self.q.shape[0], self.heads, self.kv_lora_rank), float("nan"),
                         dtype=self.dtype, device=DEVICE)
        v = self.k[..., :self.kv_lora_rank]
        self.backend.init_forward_metadata(self.batch)
        if through_op:
            with set_forward_context(self.batch, self.backend):
                attention_op(self.q, self.k, v, out, 0, self.scaling)
        else:
            self.backend.forward(self.q, self.k, v, out, 0, self.scaling, self.batch)
        return out

    def check(self, atol: float, rtol: float = 0.0, through_op: bool = False,
              real_rows: int | None = None) -> None:
        """Output of the first real_rows rows (default: every real token) close to the
        reference, finite up to the real tokens, zero after them; the cache equal to the
        reference's bit for bit (but for slot 0 when padding requests race to store there)."""
        want, want_cache = reference_mla(self.q, self.k, self.initial_cache,
                                         self.table.req_to_token, self.batch, self.scaling,
                                         self.kv_lora_rank)
        got = self.run(through_op)
        real = self.num_real if real_rows is None else real_rows
        torch.testing.assert_close(got[:real].float(), want[:real], atol=atol, rtol=rtol)
        assert torch.isfinite(got[:self.num_real]).all()
        assert torch.all(got[self.num_real:] == 0), "rows past the real tokens must be zeroed"
        first = 1 if self.padding_requests else 0
        assert torch.equal(self.pool.latent_buffers[0][first:], want_cache[first:]), (
            "latents stored wrongly")


TOL = {torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}
# (heads, kv_lora_rank, rope_dim): DeepSeek's shape scaled down; 20 heads: two decode head blocks
# and a partly masked extend block; 48 latent and 24 rope dims: masked past the powers of two
SHAPES = [(4, 32, 16), (20, 64, 32), (3, 48, 24)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,kv_lora_rank,rope_dim", SHAPES)
def test_extend_matches_reference(heads: int, kv_lora_rank: int, rope_dim: int,
                                  dtype: torch.dtype) -> None:
    """Requests with and without a cached prefix, of different lengths (decoding ones among them:
    one new token on a prefix), padded rows zeroed, slot 0 untouched."""
    case = MLACase([0, 37, 0, 5, 90], [45, 1, 3, 30, 1], heads=heads,
                   kv_lora_rank=kv_lora_rank, rope_dim=rope_dim, dtype=dtype,
                   mode=ForwardMode.EXTEND, pad_rows=3, seed=heads, strided_k=heads == 4)
    case.check(TOL[dtype])


def test_mixed_batch_decoding_requests_take_the_decode_kernel() -> None:
    """A prefill chunk followed by decoding requests (one new token on a prefix, one of them
    long enough for several splits): those run through the decode kernel, same output and
    cache as the reference."""
    case = MLACase([0, 12, 37, 300, 5], [45, 20, 1, 1, 1], heads=4, kv_lora_rank=32,
                   rope_dim=16, dtype=torch.float32, mode=ForwardMode.EXTEND, pad_rows=2)
    case.backend.init_forward_metadata(case.batch)
    meta = case.batch.attn_metadata
    assert meta.num_extend_requests == 2 and meta.decode.first_row == 65
    case.check(TOL[torch.float32])


@pytest.mark.parametrize("tile", [(2, 8, 16, 4, 1), (4, 4, 16, 4, 1), (16, 1, 32, 4, 1)])
def test_extend_kernel_tiles(tile: tuple[int, int, int, int, int]) -> None:
    """Tiles other than the default: several head blocks, token blocks of 8 / 4 / 1 tokens
    (causal diagonal inside a block and across blocks), many key tiles per request."""
    case = MLACase([0, 21, 64], [40, 17, 9], heads=8, kv_lora_rank=32, rope_dim=16,
                   dtype=torch.float32, mode=ForwardMode.EXTEND, seed=1)
    want, want_cache = reference_mla(case.q, case.k, case.initial_cache,
                                     case.table.req_to_token, case.batch, case.scaling, 32)
    b, cache = case.batch, case.pool.latent_buffers[0]
    store_latent(case.k, cache, b.out_cache_loc)
    out = torch.full((case.num_real, 8, 32), float("nan"), device=DEVICE)
    mla_extend_attention(case.q, cache, out, case.table.req_to_token, b.req_pool_indices,
                         b.extend_prefix_lens, b.extend_seq_lens, b.extend_start_loc,
                         b.max_extend_len, case.scaling, tile=tile)
    torch.testing.assert_close(out, want, atol=2e-5, rtol=0)
    assert torch.equal(cache, want_cache)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("heads,kv_lora_rank,rope_dim", SHAPES)
def test_decode_matches_reference(heads: int, kv_lora_rank: int, rope_dim: int,
                                  dtype: torch.dtype) -> None:
    """The backend's decode: the split count from its policy (two splits on the CPU's pretend 4
    SMs; one for 20 heads, two head blocks), requests of 1 to ~300 keys, two padding requests (row 0, slot 0: finite output, their latent in the dump
    slot) and padded q rows zeroed."""
    rng = random.Random(heads)
    seq_lens = [1, 2, rng.randint(60, 300), rng.randint(3, 300)]
    case = MLACase([s - 1 for s in seq_lens], [1] * 4, heads=heads, kv_lora_rank=kv_lora_rank,
                   rope_dim=rope_dim, dtype=dtype, mode=ForwardMode.DECODE, pad_rows=2,
                   seed=heads + 1, strided_k=heads == 4, padding_requests=2)
    assert case.backend.decode_num_splits(6) == (2 if heads <= 16 else 1)
    case.check(TOL[dtype], real_rows=4)


@pytest.mark.parametrize("fused_store", [False, True])
@pytest.mark.parametrize("num_splits", [1, 3, 8])
def test_decode_kernel_splits_and_empty_rows(num_splits: int, fused_store: bool) -> None:
    """Splits of 16 keys exercise the split-K reduce (a request using fewer splits than
    launched, one using all); seq_len 0 rows (padding) give zeros. With fused_store the kernel
    also stores the new latents and takes the newest key from `new` instead of the cache; the
    last request has no new row (N < B) and reads everything from the cache."""
    case = MLACase([0, 4, 70, 130, 0, 40], [1] * 6, heads=4, kv_lora_rank=32, rope_dim=16,
                   dtype=torch.float32, mode=ForwardMode.DECODE, seed=num_splits,
                   strided_k=fused_store)
    want, want_cache = reference_mla(case.q, case.k, case.initial_cache,
                                     case.table.req_to_token, case.batch, case.scaling, 32)
    b, cache = case.batch, case.pool.latent_buffers[0]
    loc = b.out_cache_loc
    if fused_store:  # request 5's latent stored up front, the others by the kernel
        store_latent(case.k[5:], cache, loc[5:])
        new = {"new": case.k[:5], "new_loc": loc[:5]}
    else:
        store_latent(case.k, cache, loc)
        new = {}
    seq_lens = b.seq_lens.clone()
    seq_lens[4] = 0
    workspace = (None, None)
    if num_splits > 1:
        shapes = mla_decode_workspace_shape(6, 4, num_splits, 32)
        workspace = tuple(torch.full(s, float("nan"), device=DEVICE) for s in shapes)
    out = torch.full((6, 4, 32), float("nan"), device=DEVICE)
    mla_decode_attention(case.q, cache, out, case.table.req_to_token, b.req_pool_indices,
                         seq_lens, case.scaling, *workspace, min_split_len=16, block_n=16, **new)
    rows = [0, 1, 2, 3, 5]
    torch.testing.assert_close(out[rows], want[rows], atol=2e-5, rtol=0)
    assert torch.all(out[4] == 0)
    stored = torch.ones(cache.shape[0], dtype=torch.bool, device=DEVICE)
    stored[loc[4]] = not fused_store  # a seq_len 0 row (padding) stores nothing in the kernel
    assert torch.equal(cache[stored], want_cache[stored])
    if fused_store:
        assert torch.equal(cache[loc[4]], case.initial_cache[loc[4]])


@pytest.mark.parametrize("mode", [ForwardMode.EXTEND, ForwardMode.DECODE])
def test_called_through_the_attention_op(mode: ForwardMode) -> None:
    """The model calls the backend only through `tessera::attention` (out's last dim L, q's
    L + R); the backend comes from MLA_ATTENTION_BACKENDS for an MLASpec."""
    spec = MLASpec(1, 32, 16, torch.float32)
    assert get_attention_backend_class("triton", spec) is TritonMLABackend
    prefix, extend = ([3, 0], [9, 20]) if mode is ForwardMode.EXTEND else ([3, 50], [1, 1])
    case = MLACase(prefix, extend, heads=4, kv_lora_rank=32, rope_dim=16, dtype=torch.float32,
                   mode=mode, pad_rows=2, seed=7)
    case.check(TOL[torch.float32], through_op=True)


def test_attention_op_fake_kernel_takes_mla_shapes() -> None:
    """torch.compile traces the op through its fake kernel: with MLA's shapes (out narrower than
    q) it returns without touching a backend."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(5, 4, 48)
        k = torch.empty(5, 1, 48)
        out = torch.empty(5, 4, 32)
        assert attention_op(q, k, k[..., :32], out, 0, 0.1) is None


def test_backend_needs_a_latent_pool() -> None:
    pool = MHAKVPool(MHASpec(1, 1, 48, torch.float32), 8, DEVICE)
    with pytest.raises(TypeError, match="MLASpec"):
        TritonMLABackend(pool, ReqToTokenPool(2, 8, DEVICE), 4)


def test_decode_metadata_from_shapes_and_one_workspace() -> None:
    """Decode metadata depends on the batch size only and views one workspace allocated in
    __init__ (a graph keeps its address); splits fall to 1 as batches grow."""
    case = MLACase([3], [1], heads=4, kv_lora_rank=32, rope_dim=16, dtype=torch.float32,
                   mode=ForwardMode.DECODE)
    backend = case.backend
    ptr = backend._part_out.data_ptr()
    splits = [backend.decode_num_splits(b) for b in range(1, 40)]
    assert splits == sorted(splits, reverse=True) and splits[0] > 1 and splits[-1] == 1
    for size in (1, 2, 5, 39):
        batch = ForwardBatch.build(ForwardMode.DECODE, [0] * size, [0] * size, [0] * size,
                                   [1] * size, torch.zeros(size, dtype=torch.int64), DEVICE)
        batch.seq_lens_cpu = []  # a graph's static batch: host lists are placeholders
        backend.init_forward_metadata(batch)
        meta = batch.attn_metadata
        assert (meta.batch_size, meta.num_splits) == (size, backend.decode_num_splits(size))
        if meta.part_out is not None:
            assert meta.part_out.data_ptr() == ptr
    assert backend._part_out.data_ptr() == ptr


@pytest.mark.parametrize("mode", [ForwardMode.EXTEND, ForwardMode.DECODE])
def test_deepseek_dims_short_contexts(mode: ForwardMode) -> None:
    """DeepSeek-V2-Lite's head dims (L=512, R=64, 16 heads) and so the GPU's tile settings, at
    contexts short enough for the interpreter."""
    prefix, extend = ([0, 40], [33, 5]) if mode is ForwardMode.EXTEND else ([0, 40, 90], [1] * 3)
    case = MLACase(prefix, extend, heads=16, kv_lora_rank=512, rope_dim=64, dtype=torch.float32,
                   mode=mode, pad_rows=2, seed=3)
    case.check(1e-4)


def test_decode_static_batch_refilled_in_place() -> None:
    """What a decode graph replay does: metadata worked out once for a static batch (one-key
    contexts, every slot 0), then the batch's tensors refilled in place with the real lengths,
    slots, queries and latents and forward called again: the reference's output, the padding
    requests' latents in the dump slot only."""
    long_lens = [300, 70, 1]
    case = MLACase([s - 1 for s in long_lens], [1] * 3, heads=4, kv_lora_rank=32, rope_dim=16,
                   dtype=torch.float32, mode=ForwardMode.DECODE, seed=11)
    padded, backend = 5, case.backend
    rows = case.batch.req_pool_indices.tolist() + [0] * 2
    static = ForwardBatch.build(ForwardMode.DECODE, [0] * padded, rows, [0] * padded,
                                [1] * padded, torch.zeros(padded, dtype=torch.int64), DEVICE)
    q = torch.zeros(padded, 4, 48, device=DEVICE)
    k = torch.zeros(padded, 1, 48, device=DEVICE)
    out = torch.zeros(padded, 4, 32, device=DEVICE)
    backend.init_forward_metadata_capture(static)
    assert static.attn_metadata.num_splits > 1
    backend.forward(q, k, k[..., :32], out, 0, case.scaling, static)  # the "capture"
    static.seq_lens.copy_(torch.tensor(long_lens + [1] * 2, dtype=torch.int32))
    static.out_cache_loc.copy_(torch.cat([case.batch.out_cache_loc,
                                          torch.zeros(2, dtype=torch.int64, device=DEVICE)]))
    q[:3].copy_(case.q)
    k[:3].copy_(case.k)
    backend.forward(q, k, k[..., :32], out, 0, case.scaling, static)  # the "replay"
    want, want_cache = reference_mla(case.q, case.k, case.initial_cache,
                                     case.table.req_to_token, case.batch, case.scaling, 32)
    torch.testing.assert_close(out[:3], want[:3], atol=2e-5, rtol=0)
    assert torch.all(out[3:] == 0)  # padding: one key, slot 0, holding a zero latent
    assert torch.equal(case.pool.latent_buffers[0][1:], want_cache[1:])
    assert torch.all(case.pool.latent_buffers[0][0] == 0)


# ---- DeepSeek's sizes on the GPU --------------------------------------------------------------
DEEPSEEK_HEADS = [16, 128]  # deepseek-v2-lite; deepseek-v2/v3 (one rank)


@gpu  # tests/conftest.py skips these without CUDA
@pytest.mark.parametrize("heads", DEEPSEEK_HEADS)
def test_gpu_decode_bf16_deepseek_sizes(heads: int) -> None:
    """L=512, R=64, bf16: one request of 4096 keys (16 splits), 8 of mixed lengths, 64 (one
    split, the output written by the first kernel)."""
    for batch_size in (1, 8, 64):
        rng = random.Random(batch_size)
        seq_lens = ([4096] if batch_size == 1 else
                    [[1, 2, 100, 1000, 4096][i % 5] if batch_size == 8 else rng.randint(1, 4096)
                     for i in range(batch_size)])
        case = MLACase([s - 1 for s in seq_lens], [1] * batch_size, heads=heads,
                       kv_lora_rank=512, rope_dim=64, dtype=torch.bfloat16,
                       mode=ForwardMode.DECODE, pad_rows=3, seed=batch_size)
        case.check(atol=2e-2, rtol=2e-2)


@gpu  # tests/conftest.py skips these without CUDA
@pytest.mark.parametrize("heads", DEEPSEEK_HEADS)
def test_gpu_extend_bf16_deepseek_sizes(heads: int) -> None:
    """Prefills with and without cached prefixes up to 4096 keys, decoding requests among them,
    padded rows."""
    case = MLACase([0, 0, 3000, 1000, 7, 4095], [1024, 1, 500, 300, 100, 1], heads=heads,
                   kv_lora_rank=512, rope_dim=64, dtype=torch.bfloat16, mode=ForwardMode.EXTEND,
                   pad_rows=9, seed=heads)
    case.check(atol=2e-2, rtol=2e-2)


@gpu  # tests/conftest.py skips these without CUDA
@pytest.mark.parametrize("heads", DEEPSEEK_HEADS)
def test_gpu_decode_cuda_graph_replay_equals_eager(heads: int) -> None:
    """Capture a decode step (store + split-K attention + reduce) with one-key contexts, replay
    it with long contexts and new q / latents, twice: each replay equals the same step run
    eagerly, and the reference; nothing about lengths is baked into the graph."""
    long_lens = [4096, 1000, 100, 7, 1]
    case = MLACase([s - 1 for s in long_lens], [1] * 5, heads=heads, kv_lora_rank=512,
                   rope_dim=64, dtype=torch.bfloat16, mode=ForwardMode.DECODE)
    backend, padded = case.backend, 8  # 3 padding requests: row 0, slot 0, seq_len 1
    rows = case.batch.req_pool_indices.tolist() + [0] * 3
    static = ForwardBatch.build(ForwardMode.DECODE, [0] * padded, rows, [0] * padded,
                                [1] * padded, torch.zeros(padded, dtype=torch.int64), DEVICE)
    q = torch.zeros(padded, heads, 576, dtype=torch.bfloat16, device=DEVICE)
    k = torch.zeros(padded, 1, 576, dtype=torch.bfloat16, device=DEVICE)
    out = torch.zeros(padded, heads, 512, dtype=torch.bfloat16, device=DEVICE)
    assert backend.decode_num_splits(padded) > 1  # the reduce kernel is in the graph

    def step() -> None:
        backend.init_forward_metadata_capture(static)
        backend.forward(q, k, k[..., :512], out, 0, case.scaling, static)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # warm-up: compiles the kernels outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    static.seq_lens.copy_(torch.tensor(long_lens + [1] * 3, dtype=torch.int32))
    static.out_cache_loc.copy_(torch.cat([case.batch.out_cache_loc,
                                          torch.zeros(3, dtype=torch.int64, device=DEVICE)]))
    gen = torch.Generator().manual_seed(5)
    for replay in range(2):
        if replay:  # new contents: other queries and new latents (same slots)
            case.q = torch.randn(case.q.shape, generator=gen).to(q.dtype).to(DEVICE)
            case.k = torch.randn(case.k.shape, generator=gen).to(k.dtype).to(DEVICE)
        q.zero_()
        k.zero_()
        q[:5].copy_(case.q)
        k[:5].copy_(case.k)
        graph.replay()
        torch.cuda.synchronize()
        replayed = out.clone()
        assert torch.isfinite(replayed).all()
        step()  # the same step eagerly (stores identical latents)
        assert torch.equal(out, replayed)
        want, _ = reference_mla(case.q, case.k, case.initial_cache, case.table.req_to_token,
                                case.batch, case.scaling, 512)
        torch.testing.assert_close(replayed[:5].float(), want[:5], atol=2e-2, rtol=2e-2)
