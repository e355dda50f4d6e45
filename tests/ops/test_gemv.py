"""The one-row Triton GEMV behind tessera.ops.linear, and programmatic dependent launch (PDL).

CPU: the kernel through Triton's interpreter at small sizes against a float64 reference, and
`linear`'s dispatch rules. GPU (`gpu`): the real decode shapes in bf16, `linear` taking the GEMV
for one row, and a decode-path chain of our kernels captured in a CUDA graph with PDL on giving
exactly what it gives with PDL off.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tessera.ops import custom_ops, linear
from tessera.ops.linear import one_row_backend, set_one_row_backend, use_gemv


def _rel_err(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b=None) -> float:
    ref = x.double() @ w.double().T + (0 if b is None else b.double())
    return float((got.double() - ref).norm() / ref.norm())


@pytest.fixture(autouse=True)
def gemv_backend():
    """Every test starts from the GEMV backend (a ModelRunner elsewhere may have set torch)."""
    previous = one_row_backend()
    set_one_row_backend("triton")
    yield
    set_one_row_backend(previous)


@pytest.fixture(autouse=True)
def _numpy_2_4_interpreter_fix():
    """Loop bounds computed from arguments need the interpreter fix (a no-op when compiled)."""
    from tessera.ops.triton.interpreter import patch_for_numpy_2_4

    patch_for_numpy_2_4()
    yield


@pytest.mark.parametrize("n,k", [(64, 128), (70, 200), (33, 1000), (8, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_matches_reference(device, n, k, with_bias):
    from tessera.ops.triton.gemv import GemvConfig, gemv, gemv_config

    x = torch.randn(1, k, device=device)
    w = torch.randn(n, k, device=device)
    b = torch.randn(n, device=device) if with_bias else None
    for config in (gemv_config(n, k), GemvConfig(2, 64, 4, 1), GemvConfig(16, 32, 4, 1)):
        y = gemv(x, w, b, config)
        assert y.shape == (1, n) and torch.isfinite(y).all()
        assert _rel_err(y, x, w, b) < 1e-5, config


def test_gemv_one_dimensional_input(device):
    from tessera.ops.triton.gemv import gemv

    x, w = torch.randn(48, device=device), torch.randn(10, 48, device=device)
    assert gemv(x, w).shape == (10,)
    assert _rel_err(gemv(x, w)[None], x[None], w) < 1e-5


def test_gemv_config_covers_the_decode_shapes():
    from tessera.ops.triton.gemv import gemv_config

    # the H200 sweep's winners (benchmarks/decode_opt/profile_decode.py gemv)
    assert (gemv_config(1024, 2048).block_n, gemv_config(1024, 2048).block_k) == (2, 1024)
    assert gemv_config(4096, 14336).num_warps == 8
    assert gemv_config(151936, 1024).block_n == 16
    assert gemv_config(64, 40).block_k == 64  # never wider than K needs


def test_linear_dispatch_rules():
    x, w = torch.randn(1, 32), torch.randn(8, 32)
    assert not use_gemv(x, w)  # CPU: always F.linear
    assert torch.equal(linear(x, w), F.linear(x, w))
    meta = {"device": "meta", "dtype": torch.bfloat16}
    cuda_like = torch.empty(1, 32, **meta)
    assert not use_gemv(cuda_like, torch.empty(8, 32, **meta))  # not a CUDA tensor


def test_one_row_backend_switch():
    with pytest.raises(ValueError, match="one of"):
        set_one_row_backend("cublas")
    set_one_row_backend("torch")
    assert one_row_backend() == "torch"
    x, w = torch.randn(1, 32), torch.randn(8, 32)
    assert not use_gemv(x, w) and torch.equal(linear(x, w), F.linear(x, w))


def test_gemv_custom_op_fake_matches_real(device):
    x = torch.randn(1, 64, device=device, dtype=torch.bfloat16)
    w = torch.randn(24, 64, device=device, dtype=torch.bfloat16)
    torch.library.opcheck(custom_ops.gemv, (x, w, None),
                          test_utils=("test_schema", "test_faketensor"))


# ---- GPU ----------------------------------------------------------------------------------------
DECODE_SHAPES = [(4096, 1024), (1024, 2048), (6144, 1024), (1024, 3072), (6144, 4096),
                 (4096, 4096), (28672, 4096), (4096, 14336), (151936, 1024)]


@pytest.mark.gpu
@pytest.mark.parametrize("n,k", DECODE_SHAPES)
def test_gpu_linear_one_row_takes_the_gemv(n, k):
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    assert use_gemv(x, w, b)
    for bias in (None, b):
        y = linear(x, w, bias)
        assert y.dtype == torch.bfloat16 and y.shape == (1, n)
        assert _rel_err(y, x, w, bias) < 1e-2  # bf16 output rounding
    # two rows, fp32, strided: plain F.linear
    assert not use_gemv(torch.randn(2, k, device="cuda", dtype=torch.bfloat16), w)
    assert not use_gemv(x.float(), w.float())
    set_one_row_backend("torch")  # --linear-backend torch: cuBLAS for one row too
    assert not use_gemv(x, w, b) and torch.equal(linear(x, w, b), F.linear(x, w, b))


@pytest.mark.gpu
def test_gpu_pdl_chain_in_a_graph_matches_pdl_off(fast_ops):
    """A decode-layer-like chain of our kernels (norm -> GEMV -> q/k norm + rope -> GEMV ->
    silu -> GEMV) captured with PDL on replays to exactly the PDL-off result, many times."""
    from tessera.ops import QKNormRotary, RMSNorm, RotaryEmbedding, SiluAndMul
    from tessera.ops.triton import pdl

    torch.manual_seed(0)
    dt, dev = torch.bfloat16, "cuda"
    norm = RMSNorm(1024).to(dev, dt)
    q_norm, k_norm = RMSNorm(128).to(dev, dt), RMSNorm(128).to(dev, dt)
    rope = RotaryEmbedding(128, 4096, 1e6).to(dev)
    qk = QKNormRotary(q_norm, k_norm, rope)
    act = SiluAndMul()
    w_qkv = torch.randn(4096, 1024, device=dev, dtype=dt) * 0.03
    w_up = torch.randn(6144, 2048, device=dev, dtype=dt) * 0.03
    w_down = torch.randn(1024, 3072, device=dev, dtype=dt) * 0.03
    hidden = torch.randn(1, 1024, device=dev, dtype=dt)
    residual = torch.randn(1, 1024, device=dev, dtype=dt)
    positions = torch.tensor([77], device=dev)

    def step():
        x, res = norm(hidden, residual)
        qkv = linear(x, w_qkv)
        q, k = qk(positions, qkv[:, :2048].view(1, 16, 128), qkv[:, 2048:3072].view(1, 8, 128))
        up = linear(torch.cat([q.flatten(1), k.flatten(1)], 1)[:, :2048].contiguous(), w_up)
        return linear(act(up), w_down), res

    def captured():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = step()
        return graph, out

    want = [t.clone() for t in step()]
    try:
        pdl.set_enabled(True)
        assert pdl.use_pdl(hidden.device)
        eager = step()
        graph, out = captured()
    finally:
        pdl.set_enabled(False)
    for a, b in zip(eager, want):
        assert torch.equal(a, b)
    for _ in range(20):
        for t in out:
            t.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        for a, b in zip(out, want):
            assert torch.equal(a, b)
