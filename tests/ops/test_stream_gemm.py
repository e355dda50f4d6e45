"""The few-row weight-streaming GEMM (tessera.ops.triton.stream_gemm).

CPU: the kernel through Triton's interpreter at small sizes against a float64 reference (float16:
the interpreter's tl.dot does not take bfloat16 operands), with
and without the split over K (the last program of a tile adds the partials and resets the tile's
counter: a second launch gives the same bits), with bias, rows that are not a power of two and
features that do not fill the last tile. GPU (`gpu`): llama3-8b's and qwen3-0.6b's projection
shapes in bf16 at 1..64 rows, under PDL, repeated in a CUDA graph.
"""
from __future__ import annotations

import importlib

import pytest
import torch
from ops_layer_helpers import linear_rel_err

from tessera.ops.triton.stream_gemm import StreamConfig, stream_config, stream_gemm


@pytest.mark.parametrize(("m", "n", "k", "split", "bias"), [
    (16, 96, 512, 1, False),   # one program a tile; the last tile half full
    (16, 128, 512, 2, True),
    (5, 100, 1024, 4, True),   # 5 rows: a 16-row MMA side, 11 rows masked
    (33, 64, 512, 4, False),   # 33 rows: the 64-row side
    (1, 70, 256, 2, False),
])
def test_stream_gemm_matches_reference(device, m, n, k, split, bias):
    torch.manual_seed(m * 1000 + n + split)
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    x = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device) / k ** 0.5
    b = torch.randn(n, dtype=dtype, device=device) if bias else None
    config = StreamConfig(block_n=64, block_k=128 if k % (128 * split) == 0 else 64, split=split)
    y = stream_gemm(x, w, b, config)
    assert y.shape == (m, n) and y.dtype == dtype
    assert linear_rel_err(y, x, w, b) < 8e-3
    # the counters are back at zero: a second launch reduces again, to the same bits
    assert torch.equal(stream_gemm(x, w, b, config), y)


def test_stream_gemm_strided_rows(device):
    """x may be a row-strided view (unit stride along K), as a slice of a fused output is."""
    torch.manual_seed(1)
    base = torch.randn(8, 2 * 256, dtype=torch.float16, device=device)
    x = base[:, :256]
    w = torch.randn(64, 256, dtype=torch.float16, device=device) / 16
    y = stream_gemm(x, w, None, StreamConfig(block_n=64, block_k=64, split=2))
    assert linear_rel_err(y, x, w) < 4e-3


def test_stream_config_splits_until_the_sms_fill():
    # llama3-8b: qkv 96 tiles -> 2 splits; o_proj / down 64 tiles -> 4; gate_up 448 tiles -> 1
    assert stream_config(6144, 4096).split == 2
    assert stream_config(4096, 4096).split == 4
    assert stream_config(4096, 14336).split == 4
    assert stream_config(28672, 4096).split == 1
    # qwen3-0.6b: qkv 64 tiles -> 4; never fewer than 2 K tiles a program; K in whole tiles
    assert stream_config(4096, 1024).split == 4
    assert stream_config(1024, 512).split == 2
    assert stream_config(1024, 1000).split == 1
    assert stream_config(1024, 960).block_k == 64
    # row tiles count as tiles: qwen3-0.6b's down at 256 rows (16 x 4 tiles) -> split 4
    assert stream_config(1024, 3072, rows=256).split == 4


def test_stream_gemm_row_tiles(device):
    """More rows than one program's 64: row tiles, with and without the K split (each output
    tile its own counter), bias included."""
    torch.manual_seed(7)
    dtype = torch.bfloat16 if device == "cuda" else torch.float16
    x = torch.randn(100, 256, dtype=dtype, device=device)
    w = torch.randn(80, 256, dtype=dtype, device=device) / 16
    b = torch.randn(80, dtype=dtype, device=device)
    for split in (1, 2):
        y = stream_gemm(x, w, b, StreamConfig(block_n=64, block_k=64, split=split))
        assert y.shape == (100, 80) and linear_rel_err(y, x, w, b) < 8e-3


def test_stream_gemm_rejects_bad_input(device):
    x = torch.randn(4, 128, dtype=torch.float16, device=device)
    w = torch.randn(64, 128, dtype=torch.float16, device=device)
    with pytest.raises(AssertionError, match="whole"):
        stream_gemm(x, w, None, StreamConfig(block_n=64, block_k=128, split=2))
    with pytest.raises(AssertionError):
        stream_gemm(x[:, :64], w)  # K differs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("shape", [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336),
                                   (4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072)])
def test_gpu_stream_gemm_model_shapes(shape):
    from tessera.ops.triton import pdl

    n, k = shape
    torch.manual_seed(n + k)
    w = torch.randn(n, k, dtype=torch.bfloat16, device="cuda") / k ** 0.5
    previous = pdl.enabled()
    pdl.set_enabled(True)
    try:
        for m in (1, 7, 16, 40, 64):
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            y = stream_gemm(x, w)
            assert linear_rel_err(y, x, w) < 8e-3, (shape, m)
        x = torch.randn(16, k, dtype=torch.bfloat16, device="cuda")
        first = stream_gemm(x, w)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = stream_gemm(x, w)
        for _ in range(3):
            graph.replay()
            torch.cuda.synchronize()
            assert torch.equal(out, first)
    finally:
        pdl.set_enabled(previous)


def test_linear_few_row_dispatch_rules():
    """CPU tensors never take the kernel; the custom op's fake matches its real output; under
    torch.compile the traced graph holds tessera::few_row_linear (one graph for every row count:
    no guard on it) only where the kernels could run."""
    import torch.nn.functional as F

    from tessera.ops.linear import MAX_STREAM_ROWS, few_row_linear, linear, use_stream

    x, w = torch.randn(MAX_STREAM_ROWS, 64), torch.randn(8, 64)
    assert not use_stream(x, w) and torch.equal(linear(x, w), F.linear(x, w))
    torch.library.opcheck(few_row_linear, (x, w, None),
                          test_utils=("test_schema", "test_faketensor"))
    torch.testing.assert_close(few_row_linear(x, w, None), F.linear(x, w))


def test_traced_linear_calls_the_few_row_op(monkeypatch):
    """What Dynamo records for a linear layer on an eligible (CUDA-like) input: the op, not a
    matmul, in one graph for every row count."""
    import torch.nn.functional as F

    # the module (the package re-exports its function of the same name)
    linear_module = importlib.import_module("tessera.ops.linear")
    # eligible while tracing only: when the graph runs on the CPU the op takes F.linear
    monkeypatch.setattr(linear_module, "_eligible",
                        lambda x, w, b: torch.compiler.is_compiling())
    graphs = []

    def backend(gm, example_inputs):
        graphs.append([str(node.target) for node in gm.graph.nodes if node.op == "call_function"])
        return gm.forward

    torch._dynamo.reset()
    w = torch.randn(8, 64)
    fn = torch.compile(lambda x: linear_module.linear(x, w), backend=backend, dynamic=True,
                       fullgraph=True)
    for rows in (2, 5, 40):
        x = torch.randn(rows, 64)
        torch.testing.assert_close(fn(x), F.linear(x, w))
    assert len(graphs) == 1, graphs
    assert any("few_row_linear" in target for target in graphs[0]), graphs
    assert not any("mm" in target or target.endswith("linear>") for target in graphs[0]), graphs


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_linear_few_rows_take_the_stream_gemm(monkeypatch):
    """Every projection up to MAX_STREAM_ROWS rows, narrow ones (N <= K) up to
    MAX_NARROW_STREAM_ROWS, one row the GEMV, more rows cuBLAS, --linear-backend torch cuBLAS."""
    import torch.nn.functional as F

    from tessera.ops.linear import (
        MAX_NARROW_STREAM_ROWS,
        MAX_STREAM_ROWS,
        linear,
        set_one_row_backend,
        use_gemv,
        use_stream,
    )
    from tessera.ops.triton import stream_gemm as stream_module

    set_one_row_backend("triton")
    narrow = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
    wide = torch.randn(6144, 4096, device="cuda", dtype=torch.bfloat16) * 0.02
    used = []
    real = stream_module.stream_gemm
    monkeypatch.setattr(stream_module, "stream_gemm",
                        lambda *a, **k: used.append(tuple(a[1].shape) + (a[0].shape[0],))
                        or real(*a, **k))
    for w, limit in ((narrow, MAX_NARROW_STREAM_ROWS), (wide, MAX_STREAM_ROWS)):
        for rows in (1, 2, MAX_STREAM_ROWS, MAX_STREAM_ROWS + 1, limit, limit + 1):
            x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
            assert use_stream(x, w) == (rows <= limit), (w.shape, rows)
            y = linear(x, w)
            assert linear_rel_err(y, x, w) < 8e-3
            if rows > limit:
                assert torch.equal(y, F.linear(x, w))
        assert use_gemv(torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16), w)
    # one row took the GEMV; past the limits cuBLAS
    assert used == ([(4096, 4096, r) for r in (2, MAX_STREAM_ROWS, MAX_STREAM_ROWS + 1,
                                               MAX_NARROW_STREAM_ROWS)]
                    + [(6144, 4096, r) for r in (2, MAX_STREAM_ROWS, MAX_STREAM_ROWS)])
    set_one_row_backend("torch")
    try:
        x = torch.randn(4, 4096, device="cuda", dtype=torch.bfloat16)
        assert not use_stream(x, narrow) and torch.equal(linear(x, narrow), F.linear(x, narrow))
    finally:
        set_one_row_backend("triton")


def test_workspace_is_reserved_once_and_never_grown_inside_a_capture(monkeypatch):
    from tessera.ops.triton import stream_gemm as module

    monkeypatch.setattr(module, "_workspaces", {})
    cpu = torch.device("cpu")
    module.reserve_workspace(cpu)
    ws, counts = module._workspaces[cpu]
    assert ws.numel() == module.RESERVED_FLOATS and not counts.any()
    assert module._workspace(cpu, 10, 10)[0] is ws  # big enough: the same tensors
    module.reserve_workspace(cpu, 2 * module.RESERVED_FLOATS)  # grows outside a capture
    assert module._workspaces[cpu][0].numel() == 2 * module.RESERVED_FLOATS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    with pytest.raises(RuntimeError, match="reserve it first"):
        module.reserve_workspace(cpu, 4 * module.RESERVED_FLOATS)
    module.reserve_workspace(cpu)  # already big enough: fine while capturing
