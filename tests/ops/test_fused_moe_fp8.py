"""Fused MoE with block-FP8 experts: the Triton kernels against the reference (interpreter on the
CPU, small sizes), the reference against dequantize-then-fused_moe_torch, and both custom ops'
fake kernels (opcheck)."""
from __future__ import annotations

import pytest
import torch

from tessera.ops import custom_ops
from tessera.ops.fp8_gemm import dequantize_block_fp8, quantize_block_fp8
from tessera.ops.moe import fused_moe_fp8_torch, fused_moe_torch

pytest.importorskip("triton")
BLOCK = (128, 128)


def _problem(num_tokens, num_experts, top_k, hidden, inter, device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=g)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) * hidden ** -0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) * inter ** -0.5
    w13[0, :128, :128] *= 10  # a block whose scale differs from the rest
    (w13_q, w13_s), (w2_q, w2_s) = quantize_block_fp8(w13, BLOCK), quantize_block_fp8(w2, BLOCK)
    probs = torch.randn(num_tokens, num_experts, generator=g).softmax(-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    return [t.to(device) for t in (x, w13_q, w2_q, w13_s, w2_s, weights, ids)]


@pytest.mark.parametrize("fp8_dot", [True, False])
@pytest.mark.parametrize("num_tokens,num_experts,top_k", [(1, 4, 2), (6, 4, 3)])
def test_triton_fp8_moe_matches_reference(device, num_tokens, num_experts, top_k, fp8_dot):
    from tessera.ops.triton.fused_moe_fp8 import fused_moe_fp8
    from tessera.ops.triton.moe_config import MoEKernelConfig

    # H 256 and I 256: two scale blocks along each dim, several N tiles of 64 per block
    args = _problem(num_tokens, num_experts, top_k, 256, 256, device)
    ref = fused_moe_fp8_torch(*args, BLOCK)
    out = fused_moe_fp8(*args, *BLOCK, fp8_dot=fp8_dot,
                        config=MoEKernelConfig(block_m=16, block_n=64, block_k=128))
    # same quantized activations, same exact fp8 products: float32 summation order only
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_reference_is_dequantized_experts_within_fp8_activation_error():
    x, w13_q, w2_q, w13_s, w2_s, weights, ids = _problem(8, 4, 2, 256, 128, "cpu", seed=1)
    ref = fused_moe_fp8_torch(x, w13_q, w2_q, w13_s, w2_s, weights, ids, BLOCK)
    plain = fused_moe_torch(x, dequantize_block_fp8(w13_q, w13_s, BLOCK),
                            dequantize_block_fp8(w2_q, w2_s, BLOCK), weights, ids)
    # the difference is only the two per-token-group activation roundings (2^-4 relative per
    # element, averaging out over the 128-term block sums): a few per cent of the output
    assert (ref - plain).abs().max() < 0.05 * plain.abs().max()
    assert not torch.equal(ref, plain)  # the activations really were rounded


@pytest.mark.parametrize("op", ["fused_moe_fp8", "fused_moe_fp8_torch"])
def test_custom_ops_pass_opcheck(device, op):
    args = _problem(3, 4, 2, 128, 128, device, seed=2)
    # not test_schema: its mutation check multiplies the fp8 inputs, which CPU torch cannot do
    torch.library.opcheck(getattr(custom_ops, op), (*args, *BLOCK),
                          test_utils=("test_faketensor",))


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 64, 512])
@pytest.mark.parametrize("num_experts,top_k,hidden,inter", [(64, 6, 2048, 1408),  # V2-Lite
                                                             (128, 8, 2048, 768)])  # Qwen3-30B
def test_gpu_fp8_moe_real_shapes(num_tokens, num_experts, top_k, hidden, inter):
    from tessera.ops.triton.fused_moe_fp8 import fused_moe_fp8

    args = _problem(num_tokens, num_experts, top_k, hidden, inter, "cuda")
    args[0] = args[0].to(torch.bfloat16)
    ref = fused_moe_fp8_torch(*args, BLOCK).float()
    out = fused_moe_fp8(*args, *BLOCK).float()
    # bf16 intermediate before the second quantization and bf16 output: ~1% of the scale
    torch.testing.assert_close(out, ref, atol=2e-2 * ref.abs().max().item(), rtol=2e-2)
