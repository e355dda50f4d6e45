"""Row-wise argmax (tessera.ops.triton.argmax) against torch.argmax.

CPU: the two kernels through Triton's interpreter; GPU (`gpu`): the vocab sizes of the benchmark
models, bf16 and float32 rows, and a CUDA graph replaying the launch on new logits. Every case
draws fresh random rows and plants what torch's definition turns on: ties (the first maximum
wins, also across chunk programs), -inf everywhere but one entry, whole rows of -inf, NaN (the
largest value) and rows whose length is not a multiple of the chunk.
"""
from __future__ import annotations

import pytest
import torch

from tessera.ops.triton.argmax import BLOCK, argmax


def planted(rows: int, v: int, dtype: torch.dtype, device: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, v, generator=g)
    top = x.max() + 1
    if rows > 1:  # a tie across chunks: the first occurrence is in chunk 0
        x[1, 3] = x[1, v - 2] = top
    if rows > 2:  # a tie inside a chunk
        x[2, v // 2] = x[2, v // 2 + 1] = top
    if rows > 3:  # -inf everywhere but one entry
        x[3] = float("-inf")
        x[3, v - 1] = -5.0
    if rows > 4:  # all -inf: index 0
        x[4] = float("-inf")
    if rows > 5:  # NaN beats +inf; the first NaN wins
        x[5, 7] = float("inf")
        x[5, v - 3] = x[5, v - 1] = float("nan")
    return x.to(dtype=dtype, device=device)


@pytest.mark.parametrize(("rows", "v"), [(1, 1), (3, 257), (6, BLOCK + 5), (6, 3 * BLOCK)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_argmax_matches_torch(device, rows, v, dtype):
    for seed in range(2):
        x = planted(rows, v, dtype, device, seed * 100 + rows + v)
        assert torch.equal(argmax(x), x.argmax(dim=-1))


def test_argmax_strided_rows(device):
    x = planted(6, 2 * BLOCK, torch.float32, device, 7)
    view = x[:, : BLOCK + 9]  # row stride 2 * BLOCK, unit stride along V
    assert torch.equal(argmax(view), view.argmax(dim=-1))


def test_argmax_empty_batch(device):
    assert argmax(torch.empty(0, 10, device=device)).shape == (0,)


def test_dispatch_falls_back_to_torch_off_cuda():
    from tessera.ops import argmax as op

    x = planted(6, 300, torch.float32, "cpu", 3)
    assert not op.use_triton_argmax(x)
    assert torch.equal(op.argmax(x), x.argmax(dim=-1))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("v", [128256, 151936])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_vocab_sizes_and_graph_replay(v, dtype, monkeypatch):
    from tessera.ops.triton import argmax as module
    from tessera.ops.triton import pdl

    for launcher in module._LAUNCHERS:  # every direct launch checked against the JIT's choice
        monkeypatch.setattr(launcher, "verify", True)
    pdl.set_enabled(True)
    try:
        for seed in range(3):  # the first call through the JIT, then the direct launchers
            x = planted(8, v, dtype, "cuda", v + seed)
            assert torch.equal(argmax(x), x.argmax(dim=-1))
        assert all(launcher.direct_launches > 0 for launcher in module._LAUNCHERS)
        static = torch.empty_like(x)
        static.copy_(x)
        argmax(static)  # compile outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = argmax(static)
        for seed in range(3):
            static.copy_(planted(8, v, dtype, "cuda", seed))
            graph.replay()
            assert torch.equal(out, static.argmax(dim=-1))
    finally:
        pdl.set_enabled(pdl.ENV_ENABLED)
