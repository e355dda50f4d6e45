"""The fused per-head q/k RMSNorm + rotary op (Qwen3) equals its native composition.

Native is exactly what the model computed before the fusion: `q_norm`, `k_norm` (RMSNorm over
head_dim) then rotary, each op's `forward_native`. On CPU the Triton kernel runs through the
interpreter (tests/ops/conftest.py) at small sizes; on a GPU the `gpu` test adds Qwen3 sizes.
"""
from __future__ import annotations

import pytest
import torch

from tessera.layers.layernorm import RMSNorm
from tessera.layers.qk_norm_rope import QKNormRotary
from tessera.layers.rotary import RotaryEmbedding

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def assert_close(fast: torch.Tensor, native: torch.Tensor) -> None:
    assert fast.dtype == native.dtype and fast.shape == native.shape
    assert fast.is_contiguous()
    # one ulp of the output dtype: rsqrt on the GPU can flip a rounding of the normalized value
    tol = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[native.dtype]
    torch.testing.assert_close(fast, native, rtol=tol, atol=tol)


def _modules(head_dim: int, weight_dtype: torch.dtype, device: str, eps: float = 1e-6,
             scaling: dict | None = None, max_pos: int = 512):
    q_norm = RMSNorm(head_dim, eps).to(device=device, dtype=weight_dtype)
    k_norm = RMSNorm(head_dim, eps).to(device=device, dtype=weight_dtype)
    with torch.no_grad():
        q_norm.weight.copy_(1.0 + 0.3 * torch.randn(head_dim, device=device))
        k_norm.weight.copy_(1.0 + 0.3 * torch.randn(head_dim, device=device))
    rope = RotaryEmbedding(head_dim, max_pos, 1000000.0, scaling).to(device)
    return q_norm, k_norm, rope, QKNormRotary(q_norm, k_norm, rope)


def _qkv_views(tokens: int, heads: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
               device: str):
    """q and k as the model sees them: strided [T, H, D] views of the fused QKV output."""
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype) * 2
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    return q, k


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 32), (3, 3, 64), (12, 1, 16),
                                                     (16, 8, 128)])
def test_qk_norm_rope_matches_native(fast_ops, device, dtype, heads, kv_heads, head_dim):
    *_, op = _modules(head_dim, dtype, device)
    assert op.bound_forward == "forward_cuda"
    tokens = 5
    q, k = _qkv_views(tokens, heads, kv_heads, head_dim, dtype, device)
    positions = torch.randint(0, 512, (tokens,), device=device)
    q_before, k_before = q.clone(), k.clone()
    q_out, k_out = op(positions, q, k)
    q_ref, k_ref = op.forward_native(positions, q, k)
    assert_close(q_out, q_ref)
    assert_close(k_out, k_ref)
    assert torch.equal(q, q_before) and torch.equal(k, k_before)  # out of place


def test_native_is_the_unfused_composition(device):
    """forward_native is literally q_norm -> k_norm -> rotary, each native."""
    q_norm, k_norm, rope, op = _modules(32, torch.float32, device, scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64})
    q, k = _qkv_views(3, 4, 2, 32, torch.float32, device)
    positions = torch.tensor([0, 17, 511], device=device)
    want = rope.forward_native(positions, q_norm.forward_native(q), k_norm.forward_native(k))
    for got, ref in zip(op.forward_native(positions, q, k), want):
        assert torch.equal(got, ref)


def test_fp32_weight_promotes_like_native(fast_ops, device):
    """A float32 norm weight on bf16 activations gives float32 outputs, as native does."""
    *_, op = _modules(32, torch.float32, device)
    q, k = _qkv_views(4, 4, 2, 32, torch.bfloat16, device)
    positions = torch.randint(0, 512, (4,), device=device)
    for got, ref in zip(op(positions, q, k), op.forward_native(positions, q, k)):
        assert got.dtype == torch.float32
        assert_close(got, ref)


def test_owns_no_parameters_and_shares_the_norm_weights(device):
    q_norm, k_norm, rope, op = _modules(16, torch.float32, device)
    assert list(op.parameters()) == [] and op.state_dict() == {}
    with torch.no_grad():
        q_norm.weight.mul_(2.0)  # the op reads the module's weight at call time
    q, k = _qkv_views(2, 2, 1, 16, torch.float32, device)
    positions = torch.zeros(2, dtype=torch.long, device=device)
    want = rope.forward_native(positions, q_norm.forward_native(q), k_norm.forward_native(k))
    assert torch.equal(op.forward_native(positions, q, k)[0], want[0])


def test_mismatched_eps_is_refused(device):
    rope = RotaryEmbedding(16, 32, 10000.0)
    with pytest.raises(ValueError, match="eps"):
        QKNormRotary(RMSNorm(16, 1e-6), RMSNorm(16, 1e-5), rope)


def test_empty_batch(fast_ops, device):
    *_, op = _modules(16, torch.float32, device)
    q, k = op(torch.empty(0, dtype=torch.long, device=device),
              torch.empty(0, 2, 16, device=device), torch.empty(0, 1, 16, device=device))
    assert q.shape == (0, 2, 16) and k.shape == (0, 1, 16)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 4096])
def test_gpu_qk_norm_rope_qwen3_size(fast_ops, tokens):
    *_, op = _modules(128, torch.bfloat16, "cuda", max_pos=40960)
    q, k = _qkv_views(tokens, 16, 8, 128, torch.bfloat16, "cuda")
    positions = torch.randint(0, 40960, (tokens,), device="cuda")
    for got, ref in zip(op(positions, q, k), op.forward_native(positions, q, k)):
        assert_close(got, ref)
