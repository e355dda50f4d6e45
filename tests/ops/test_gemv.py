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
from ops_layer_helpers import linear_rel_err

from tessera.ops import custom_ops, linear
from tessera.ops.linear import one_row_backend, set_one_row_backend, use_gemv


@pytest.fixture(autouse=True)
def gemv_backend():
    """Every test starts from the GEMV backend (a ModelRunner elsewhere may have set torch)."""
    previous = one_row_backend()
    set_one_row_backend("triton")
    yield
    set_one_row_backend(previous)


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
        assert linear_rel_err(y, x, w, b) < 1e-5, config


def test_gemv_one_dimensional_input(device):
    from tessera.ops.triton.gemv import gemv

    x, w = torch.randn(48, device=device), torch.randn(10, 48, device=device)
    assert gemv(x, w).shape == (10,)
    assert linear_rel_err(gemv(x, w)[None], x[None], w) < 1e-5


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


def _rms_norm_ref(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return w.double() * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


@pytest.mark.parametrize("n,k", [(64, 128), (70, 200), (9, 1000)])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
def test_gemv_rms_norm_matches_reference(device, n, k, with_residual, with_bias):
    from tessera.ops.triton.gemv import GemvConfig, gemv_config, gemv_rms_norm

    x, r = torch.randn(1, k, device=device), torch.randn(1, k, device=device)
    norm_w = torch.rand(k, device=device) + 0.5
    w = torch.randn(n, k, device=device)
    b = torch.randn(n, device=device) if with_bias else None
    residual = r if with_residual else None
    total = x + r if with_residual else x
    want = _rms_norm_ref(total, norm_w, 1e-6) @ w.double().T + (0 if b is None else b.double())
    for config in (gemv_config(n, k), GemvConfig(2, 64, 4, 1), GemvConfig(16, 32, 4, 1)):
        y, new_residual = gemv_rms_norm(x, residual, norm_w, 1e-6, w, b, config)
        assert torch.equal(new_residual, total), "program 0 writes x + residual (or x)"
        assert float((y.double() - want).norm() / want.norm()) < 1e-5, config


def test_gemv_rms_norm_bf16_matches_the_unfused_kernels(device):
    """bf16: rounded where rms_norm and gemv round, so the fused kernel agrees with the two."""
    from tessera.ops.triton.gemv import gemv, gemv_rms_norm
    from tessera.ops.triton.rmsnorm import fused_add_rms_norm

    dt = torch.bfloat16
    x, r = torch.randn(1, 256, device=device, dtype=dt), torch.randn(1, 256, device=device, dtype=dt)
    norm_w = (torch.rand(256, device=device) + 0.5).to(dt)
    w = torch.randn(96, 256, device=device, dtype=dt)
    normed, total = fused_add_rms_norm(x, r, norm_w, 1e-6)
    y, new_residual = gemv_rms_norm(x, r, norm_w, 1e-6, w)
    assert torch.equal(new_residual, total)
    want = gemv(normed, w).float()
    assert float((y.float() - want).norm() / want.norm()) < 1e-2


@pytest.mark.parametrize("n,k", [(64, 128), (33, 300)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_silu_mul_matches_the_unfused_kernels(device, n, k, dtype):
    from tessera.ops.triton.activation import silu_and_mul
    from tessera.ops.triton.gemv import GemvConfig, gemv, gemv_silu_mul

    gate_up = torch.randn(1, 2 * k, device=device, dtype=dtype)
    w = torch.randn(n, k, device=device, dtype=dtype)
    b = torch.randn(n, device=device, dtype=dtype)
    act = silu_and_mul(gate_up)
    for config in (None, GemvConfig(2, 64, 4, 1)):
        y = gemv_silu_mul(gate_up, w, b, config)
        # same input values, same accumulation order: identical to the two kernels
        assert torch.equal(y, gemv(act, w, b, config)), config
    ref = F.silu(gate_up[:, :k].double()) * gate_up[:, k:].double() @ w.double().T + b.double()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert float((y.double() - ref).norm() / ref.norm()) < tol


def test_fused_custom_ops_fake_match_real(device):
    dt = torch.bfloat16
    x, r = torch.randn(1, 64, device=device, dtype=dt), torch.randn(1, 64, device=device, dtype=dt)
    norm_w, w = torch.ones(64, device=device, dtype=dt), torch.randn(24, 64, device=device, dtype=dt)
    checks = ("test_schema", "test_faketensor")
    torch.library.opcheck(custom_ops.gemv_rms_norm, (x, r, norm_w, 1e-6, w, None), test_utils=checks)
    torch.library.opcheck(custom_ops.gemv_rms_norm, (x, None, norm_w, 1e-6, w, None),
                          test_utils=checks)
    gate_up = torch.randn(1, 128, device=device, dtype=dt)
    torch.library.opcheck(custom_ops.gemv_silu_mul, (gate_up, w, None), test_utils=checks)


def _layers(k: int, n: int, dtype: torch.dtype, device: str):
    from tessera.layers.layernorm import RMSNorm
    from tessera.layers.linear import LinearBase

    norm = RMSNorm(k).to(device, dtype)
    norm.weight.requires_grad_(False)  # inference weights, as the model loader leaves them
    norm.weight.data.uniform_(0.5, 1.5)
    layer = LinearBase(k, n, bias=True, dtype=dtype).to(device)
    layer.weight.data.normal_(0, 0.05)
    layer.bias.data.normal_()
    return norm, layer


def test_forward_norm_falls_back_to_the_two_modules(monkeypatch):
    """CPU (no GEMV): exactly norm then linear; without a residual the new residual is x. The
    ops are built for the CPU platform even on a GPU machine (they would bind their CUDA path)."""
    from tessera.layers import custom_op as base
    from tessera.layers.activation import SiluAndMul
    from tessera.platforms import CpuPlatform

    monkeypatch.setattr(base, "current_platform", CpuPlatform)

    norm, layer = _layers(32, 8, torch.float32, "cpu")
    x, r = torch.randn(1, 32), torch.randn(1, 32)
    y, res = layer.forward_norm(x, r, norm)
    normed, want_res = norm(x, r)
    assert torch.equal(y, layer(normed)) and torch.equal(res, want_res)
    y, res = layer.forward_norm(x, None, norm)
    assert torch.equal(y, layer(norm(x))) and res is x
    act, down = SiluAndMul(), _layers(16, 8, torch.float32, "cpu")[1]
    gate_up = torch.randn(3, 32)
    assert torch.equal(down.forward_silu_mul(gate_up, act), down(act(gate_up)))


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
        assert linear_rel_err(y, x, w, bias) < 1e-2  # bf16 output rounding
    # two rows, fp32, strided: plain F.linear
    assert not use_gemv(torch.randn(2, k, device="cuda", dtype=torch.bfloat16), w)
    assert not use_gemv(x.float(), w.float())
    set_one_row_backend("torch")  # --linear-backend torch: cuBLAS for one row too
    assert not use_gemv(x, w, b) and torch.equal(linear(x, w, b), F.linear(x, w, b))


@pytest.mark.gpu
@pytest.mark.parametrize("k,n,inter", [(1024, 4096, 3072), (4096, 6144, 14336)])
def test_gpu_forward_norm_and_forward_silu_mul_fold_into_the_gemv(fast_ops, k, n, inter):
    """qwen3-0.6b / llama3-8b shapes, bf16, one row: the fused kernels against the unfused modules
    (norm, F.linear / SiluAndMul, F.linear): the same residual, outputs within bf16 rounding."""
    from tessera.layers.activation import SiluAndMul

    torch.manual_seed(0)
    dt = torch.bfloat16
    norm, layer = _layers(k, n, dt, "cuda")
    x = torch.randn(1, k, device="cuda", dtype=dt)
    r = torch.randn(1, k, device="cuda", dtype=dt)
    for residual in (r, None):
        y, res = layer.forward_norm(x, residual, norm)
        if residual is None:
            want_res, normed = x, norm(x)
        else:
            normed, want_res = norm(x, residual)
        want = F.linear(normed, layer.weight, layer.bias)
        assert torch.equal(res, want_res)
        assert float((y.float() - want.float()).norm() / want.float().norm()) < 1e-2
    act, down = SiluAndMul(), _layers(inter, k, dt, "cuda")[1]
    gate_up = torch.randn(1, 2 * inter, device="cuda", dtype=dt)
    want = F.linear(act(gate_up), down.weight, down.bias).float()
    got = down.forward_silu_mul(gate_up, act).float()
    assert float((got - want).norm() / want.norm()) < 1e-2
    # two rows: the modules, unchanged
    two = torch.randn(2, k, device="cuda", dtype=dt)
    y2, _ = layer.forward_norm(two, None, norm)
    assert torch.equal(y2, layer(norm(two)))


@pytest.mark.gpu
def test_gpu_pdl_chain_in_a_graph_matches_pdl_off(fast_ops):
    """A decode-layer-like chain of our kernels (norm -> GEMV -> q/k norm + rope -> GEMV ->
    silu -> GEMV) captured with PDL on replays to exactly the PDL-off result, many times."""
    from tessera.layers.activation import SiluAndMul
    from tessera.layers.layernorm import RMSNorm
    from tessera.layers.qk_norm_rope import QKNormRotary
    from tessera.layers.rotary import RotaryEmbedding
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
        down = linear(act(up), w_down)
        # the fused input stages: norm + GEMV, SiLU·mul + GEMV
        qkv2, res2 = torch.ops.tessera.gemv_rms_norm(down, res, norm.weight, 1e-6, w_qkv, None)
        fused = torch.ops.tessera.gemv_silu_mul(up, w_down, None)
        return down, res, qkv2, res2, fused

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
