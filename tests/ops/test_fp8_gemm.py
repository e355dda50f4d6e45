"""Block-scaled W8A8 FP8 GEMM: the Triton kernel against its torch reference (interpreter on the
CPU at small sizes, real model shapes on a GPU), the reference against the dequantized float
matmul, block (de)quantization, and the custom op's registration (opcheck, one traced node).
Also: every `tessera::*` op registered anywhere in the package has a fake kernel, so a new op
without one fails here instead of breaking torch.compile (or, worse, being traced through)."""
from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch

import tessera
from tessera.ops import custom_ops
from tessera.ops.fp8_gemm import (
    FP8_MAX,
    dequantize_block_fp8,
    quantize_block_fp8,
    w8a8_block_fp8_matmul_torch,
)
from tessera.ops.library import has_fake_kernel
from tessera.ops.quant import per_token_group_quant_fp8_torch

BLOCK = (128, 128)


def _problem(m: int, n: int, k: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g)
    x[:, :3] *= 30  # an outlier group per row: its scale differs from its neighbours'
    w = torch.randn(n, k, generator=g) * k ** -0.5
    w[: min(n, 128), :128] *= 20  # one weight block far larger than the rest
    w_q, w_s = quantize_block_fp8(w, BLOCK)
    x_q, x_s = per_token_group_quant_fp8_torch(x, BLOCK[1])
    return x, w, [t.to(device) for t in (x_q, x_s, w_q, w_s)]


@pytest.mark.parametrize("fp8_dot", [True, False])
@pytest.mark.parametrize("m", [1, 5, 33])
@pytest.mark.parametrize("n,k", [(200, 256), (128, 384)])  # N 200: a partial scale block
def test_kernel_matches_reference(device, m, n, k, fp8_dot):
    from tessera.ops.triton.fp8_gemm import BlockFP8GemmConfig, w8a8_block_fp8_matmul

    _, _, (x_q, x_s, w_q, w_s) = _problem(m, n, k, device)
    ref = w8a8_block_fp8_matmul_torch(x_q, x_s, w_q, w_s, BLOCK, torch.float32)
    # 16x64 tiles: several N tiles per scale block, masked rows and columns
    out = w8a8_block_fp8_matmul(x_q, x_s, w_q, w_s, *BLOCK, torch.float32, fp8_dot=fp8_dot,
                                config=BlockFP8GemmConfig(block_m=16, block_n=64))
    # fp32 accumulation of the same exact products, summed per block then scaled: only the
    # order of the float32 additions differs from the reference
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-5)


def test_kernel_output_dtypes_and_leading_dims(device):
    from tessera.ops.triton.fp8_gemm import w8a8_block_fp8_matmul

    _, _, (x_q, x_s, w_q, w_s) = _problem(6, 256, 256, device, seed=1)
    ref = w8a8_block_fp8_matmul_torch(x_q, x_s, w_q, w_s, BLOCK, torch.float32)
    for dtype in (torch.bfloat16, torch.float16):
        out = w8a8_block_fp8_matmul(x_q.view(2, 3, 256), x_s.view(2, 3, 2), w_q, w_s, *BLOCK,
                                    dtype)
        assert out.dtype == dtype and out.shape == (2, 3, 256)
        torch.testing.assert_close(out.float().view(6, 256), ref, atol=2e-2, rtol=1e-2)


def test_reference_is_the_dequantized_matmul():
    """The reference against the definition, and both against the unquantized product."""
    x, w, (x_q, x_s, w_q, w_s) = _problem(4, 256, 384, "cpu", seed=2)
    x_dq = (x_q.float().view(4, 3, 128) * x_s.unsqueeze(-1)).view(4, 384)
    w_dq = dequantize_block_fp8(w_q, w_s, BLOCK)
    out = w8a8_block_fp8_matmul_torch(x_q, x_s, w_q, w_s, BLOCK, torch.float32)
    torch.testing.assert_close(out, x_dq @ w_dq.t(), atol=1e-5, rtol=1e-5)
    # e4m3 rounds each operand to 2^-4 relative; over K random terms the errors average out:
    # a few per cent of the output's scale
    exact = x @ w.t()
    assert (out - exact).abs().max() < 0.05 * exact.abs().max()


def test_block_quantization_round_trip_and_scales():
    w = torch.randn(200, 300) * 0.1
    w[:128, 128:256] *= 50
    q, s = quantize_block_fp8(w, BLOCK)
    assert q.dtype == torch.float8_e4m3fn and s.shape == (2, 3) and s.dtype == torch.float32
    # weight_scale_inv is per block amax / fp8 max: each block's largest value maps to the top
    blocks_amax = torch.stack([torch.stack([w[i:i + 128, j:j + 128].abs().max()
                                            for j in (0, 128, 256)]) for i in (0, 128)])
    torch.testing.assert_close(s, blocks_amax / FP8_MAX)
    back = dequantize_block_fp8(q, s, BLOCK)
    full = s.repeat_interleave(128, 0).repeat_interleave(128, 1)[:200, :300]
    # within e4m3 rounding (2^-4 relative), or one subnormal step of the block's scale
    assert ((back - w).abs() <= w.abs() * 2 ** -4 + full * 2 ** -9).all()
    # an all-zero block dequantizes to zeros with a finite scale
    q0, s0 = quantize_block_fp8(torch.zeros(128, 128), BLOCK)
    assert torch.isfinite(s0).all() and (dequantize_block_fp8(q0, s0, BLOCK) == 0).all()


def test_custom_op_passes_opcheck(device):
    _, _, (x_q, x_s, w_q, w_s) = _problem(5, 256, 256, device, seed=3)
    torch.library.opcheck(custom_ops.w8a8_block_fp8_matmul,
                          (x_q, x_s, w_q, w_s, 128, 128, torch.bfloat16),
                          # not test_schema: its mutation check multiplies the fp8 inputs,
                          # which CPU torch cannot do
                          test_utils=("test_faketensor", "test_aot_dispatch_dynamic"))


def test_custom_op_traces_as_one_node():
    _, _, args = _problem(3, 128, 256, "cpu", seed=4)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fn(x_q, x_s, w_q, w_s):
        return torch.ops.tessera.w8a8_block_fp8_matmul(x_q, x_s, w_q, w_s, 128, 128,
                                                       torch.float32) * 2

    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(*args), fn(*args))
    (gm,) = graphs
    calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert calls[0] in (torch.ops.tessera.w8a8_block_fp8_matmul,
                        torch.ops.tessera.w8a8_block_fp8_matmul.default)
    assert len(calls) == 2  # the op and the product


def test_a_custom_op_without_fake_kernel_is_detected():
    """torch.library.custom_op puts the real kernel under CompositeExplicitAutograd and a
    raising placeholder in the fake registry: neither may count as a fake kernel."""
    @torch.library.custom_op("tessera_test_probe::no_fake_yet", mutates_args=())
    def probe(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    assert not has_fake_kernel("tessera_test_probe::no_fake_yet")
    probe.register_fake(lambda x: torch.empty_like(x))
    assert has_fake_kernel("tessera_test_probe::no_fake_yet")


def _import_all(package) -> None:
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        importlib.import_module(info.name)


def test_every_tessera_op_has_a_fake_kernel():
    for name in ("ops", "attention", "distributed", "sampling", "layers"):
        _import_all(importlib.import_module(f"tessera.{name}"))
    ops = sorted({name.split(".")[0] for name in torch._C._dispatch_get_all_op_names()
                  if name.startswith("tessera::")})
    assert "tessera::w8a8_block_fp8_matmul" in ops and "tessera::fused_moe_fp8" in ops
    missing = [op for op in ops if not has_fake_kernel(op)]
    assert not missing, f"custom ops without a fake kernel (torch.compile needs one): {missing}"
    assert tessera  # the package itself imported


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 16, 128, 1024, 4096])
@pytest.mark.parametrize("n,k", [(2048, 2048), (4096, 7168), (3072, 2048)])
def test_gpu_kernel_matches_reference_real_sizes(m, n, k):
    from tessera.ops.fp8_gemm import w8a8_block_fp8_matmul

    _, _, (x_q, x_s, w_q, w_s) = _problem(m, n, k, "cuda", seed=5)
    ref = w8a8_block_fp8_matmul_torch(x_q, x_s, w_q, w_s, BLOCK, torch.float32)
    out = w8a8_block_fp8_matmul(x_q, x_s, w_q, w_s, BLOCK, torch.bfloat16)
    # bf16 output rounding (2^-8 relative) dominates; fp32 accumulation order is the rest
    torch.testing.assert_close(out.float(), ref, atol=1e-2 * ref.abs().max().item(), rtol=1e-2)
