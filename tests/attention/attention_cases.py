"""Shared by the attention tests: a random batch run through the Triton backend and the
torch_native reference on separate pools (`Case`), tolerances and length draws."""
from __future__ import annotations

import random

import pytest
import torch

pytest.importorskip("triton")

from tessera.attention.torch_native import TorchNativeAttentionBackend
from tessera.attention.triton import TritonAttentionBackend
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


