"""The few-row Triton GEMM behind tessera.ops.linear (2..16 rows) and tessera::few_row_linear.

CPU: the kernel through Triton's interpreter against a float64 reference (row counts below, at
and above the 16-row tile, strided x, bias, uneven N and K), `linear`'s dispatch rules, the op's
fake. GPU (`gpu`): llama3-8b / qwen3-0.6b shapes in bf16 against cuBLAS, `linear` taking the
kernel, a compiled function with a dynamic row count (one trace, the op choosing per size), and
a chain of skinny GEMMs captured with PDL on replaying to the PDL-off result.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tessera.ops import custom_ops, linear
from tessera.ops.linear import (
    MAX_FEATURES,
    MAX_ROWS,
    one_row_backend,
    set_one_row_backend,
    use_skinny,
)


def _rel_err(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b=None) -> float:
    ref = x.double() @ w.double().T + (0 if b is None else b.double())
    return float((got.double() - ref).norm() / ref.norm())


@pytest.fixture(autouse=True)
def triton_backend():
    previous = one_row_backend()
    set_one_row_backend("triton")
    yield
    set_one_row_backend(previous)


@pytest.fixture(autouse=True)
def _numpy_2_4_interpreter_fix():
    from tessera.ops.triton.interpreter import patch_for_numpy_2_4

    patch_for_numpy_2_4()
    yield


@pytest.mark.parametrize("m", [1, 3, 16, 37])
@pytest.mark.parametrize("n,k", [(64, 128), (70, 200), (8, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_gemm_matches_reference(device, m, n, k, with_bias):
    from tessera.ops.triton.skinny_gemm import SkinnyConfig, skinny_config, skinny_gemm

    torch.manual_seed(m * 1000 + n + k)
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    b = torch.randn(n, device=device) if with_bias else None
    for config in (skinny_config(n, k), SkinnyConfig(16, 32, 4, 2), SkinnyConfig(32, 64, 4, 3)):
        got = skinny_gemm(x, w, b, config)
        assert got.shape == (m, n) and torch.isfinite(got).all()
        # float32 inputs go through tf32-free dots in the interpreter; on GPU tf32: 1e-3
        assert _rel_err(got, x, w, b) < (1e-5 if device == "cpu" else 2e-3), config


def test_skinny_gemm_strided_rows_and_empty_shapes(device):
    from tessera.ops.triton.skinny_gemm import skinny_gemm

    base = torch.randn(5, 96, device=device)
    x = base[:, 16:80]  # rows 96 apart, unit stride along K
    w = torch.randn(40, 64, device=device)
    assert _rel_err(skinny_gemm(x, w), x, w) < (1e-5 if device == "cpu" else 2e-3)
    assert skinny_gemm(torch.empty(0, 64, device=device), w).shape == (0, 40)
    b = torch.randn(40, device=device)
    assert torch.equal(skinny_gemm(torch.randn(3, 0, device=device), torch.empty(40, 0,
                                                                               device=device), b),
                       b.expand(3, 40))


def test_linear_dispatch_rules_on_cpu():
    """CPU tensors: always F.linear (bit for bit), whatever the row count."""
    w = torch.randn(8, 32)
    for m in (1, 2, MAX_ROWS, MAX_ROWS + 1):
        x = torch.randn(m, 32)
        assert not use_skinny(x, w)
        assert torch.equal(linear(x, w), F.linear(x, w))
    meta = {"device": "meta", "dtype": torch.bfloat16}
    assert not use_skinny(torch.empty(4, 32, **meta), torch.empty(8, 32, **meta))


def test_few_row_linear_fake_matches_real(device):
    checks = ("test_schema", "test_faketensor")
    w = torch.randn(24, 64, device=device, dtype=torch.bfloat16)
    for m in (1, 5, 40):
        x = torch.randn(m, 64, device=device, dtype=torch.bfloat16)
        torch.library.opcheck(custom_ops.few_row_linear, (x, w, None), test_utils=checks)


def test_few_row_linear_op_equals_linear_on_cpu():
    """The op's run-time choice equals `linear`'s eager choice (on CPU both are F.linear)."""
    w, b = torch.randn(8, 32), torch.randn(8)
    for m in (0, 1, 7, 40):
        x = torch.randn(m, 32)
        assert torch.equal(torch.ops.tessera.few_row_linear(x, w, b), linear(x, w, b))


# ---- GPU ----------------------------------------------------------------------------------------
SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072), (6144, 4096),
          (4096, 4096), (28672, 4096), (4096, 14336), (128256, 4096)]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", SHAPES)
def test_gpu_skinny_gemm_matches_cublas(n, k):
    """Every llama3-8b / qwen3-0.6b linear shape: the kernel within bf16 rounding of cuBLAS;
    `linear` takes it for the narrow ones (N <= MAX_FEATURES) and cuBLAS for the wide ones."""
    from tessera.ops.triton.skinny_gemm import skinny_gemm

    torch.manual_seed(n + k)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    for m in (2, 5, 16):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        assert use_skinny(x, w, b) == (n <= MAX_FEATURES)
        for bias in (None, b):
            got = skinny_gemm(x, w, bias)
            want = F.linear(x, w, bias)
            assert got.shape == want.shape and got.dtype == torch.bfloat16
            assert _rel_err(got, x, w, bias) < 1e-2  # bf16 output rounding, like cuBLAS's
            assert float((got.float() - want.float()).abs().max()) <= 0.02 * float(
                want.float().abs().max()) + 1e-2
            assert torch.equal(linear(x, w, bias), got if n <= MAX_FEATURES else want)
    assert not use_skinny(torch.randn(MAX_ROWS + 1, k, device="cuda", dtype=torch.bfloat16), w)
    set_one_row_backend("torch")  # --linear-backend torch: cuBLAS throughout
    x = torch.randn(4, k, device="cuda", dtype=torch.bfloat16)
    assert not use_skinny(x, w) and torch.equal(linear(x, w), F.linear(x, w))


@pytest.mark.gpu
def test_gpu_compiled_linear_is_one_trace_choosing_per_size():
    """torch.compile with a dynamic row count: one frame compiled, no recompile across row counts
    that take the GEMV, the skinny GEMM and cuBLAS; every size equals the eager `linear`."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    w = torch.randn(1024, 2048, device="cuda", dtype=torch.bfloat16) * 0.02

    def f(x: torch.Tensor) -> torch.Tensor:
        return linear(x, w) * 2

    compiled = torch.compile(f, backend="eager", dynamic=True)
    # row counts >= 2 (torch specialises 0 and 1): the skinny GEMM up to 16, cuBLAS above
    for m in (3, 9, 16, 17, 300):
        x = torch.randn(m, 2048, device="cuda", dtype=torch.bfloat16)
        assert torch.equal(compiled(x), f(x)), m
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    # the op itself at one row: the GEMV, as `linear` eagerly
    x = torch.randn(1, 2048, device="cuda", dtype=torch.bfloat16)
    assert torch.equal(torch.ops.tessera.few_row_linear(x, w, None), linear(x, w))


@pytest.mark.gpu
def test_gpu_skinny_chain_in_a_graph_with_pdl_matches_pdl_off():
    from tessera.ops.triton import pdl

    torch.manual_seed(0)
    dt = torch.bfloat16
    w1 = torch.randn(6144, 1024, device="cuda", dtype=dt) * 0.03
    w2 = torch.randn(1024, 6144, device="cuda", dtype=dt) * 0.03
    x = torch.randn(8, 1024, device="cuda", dtype=dt)

    def step():
        h = linear(x, w1)
        return linear(torch.relu(h), w2), h

    want = [t.clone() for t in step()]
    try:
        pdl.set_enabled(True)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
        for got, ref in zip(out, want):
            assert torch.equal(got, ref)
    finally:
        pdl.set_enabled(pdl.ENV_ENABLED)
