"""Each fast op equals its native form on fresh random inputs.

On CPU the Triton kernels run through the interpreter at small sizes; on a GPU the same tests run
compiled, and the `gpu` tests add real sizes (bf16, T=4096, hidden 4096, head_dim 128). The kernels
round exactly where the native path rounds, so results agree to the last bit except where the
GPU's fast transcendental functions (rsqrt, exp) differ from PyTorch's by an ulp of float32.
"""
from __future__ import annotations

import pytest
import torch

from tessera.layers.activation import SiluAndMul
from tessera.layers.layernorm import RMSNorm
from tessera.layers.rotary import RotaryEmbedding

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def assert_close(fast: torch.Tensor, native: torch.Tensor) -> None:
    assert fast.dtype == native.dtype and fast.shape == native.shape
    # one ulp of the activation dtype: a fast transcendental can flip a rounding on the GPU
    tol = {torch.float32: 1e-5, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}[native.dtype]
    torch.testing.assert_close(fast, native, rtol=tol, atol=tol)


def _rmsnorm(hidden: int, dtype: torch.dtype, device: str) -> RMSNorm:
    norm = RMSNorm(hidden, eps=1e-5).to(device=device, dtype=dtype)
    with torch.no_grad():
        norm.weight.copy_(1.0 + 0.2 * torch.randn(hidden, device=device))
    return norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(7, 64), (3, 96), (2, 3, 40)])
def test_rms_norm_matches_native(fast_ops, device, dtype, shape):
    norm = _rmsnorm(shape[-1], dtype, device)
    assert norm.bound_forward == "forward_cuda"
    x = torch.randn(shape, device=device, dtype=dtype) * 3
    assert_close(norm(x), norm.forward_native(x))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_add_rms_norm_matches_native(fast_ops, device, dtype):
    norm = _rmsnorm(80, dtype, device)
    x = torch.randn(9, 80, device=device, dtype=dtype)
    residual = torch.randn(9, 80, device=device, dtype=dtype)
    out, new_residual = norm(x, residual)
    ref_out, ref_residual = norm.forward_native(x, residual)
    assert_close(out, ref_out)
    assert_close(new_residual, ref_residual)
    # functional op: the inputs are left alone
    assert not torch.equal(new_residual, residual)


def test_rms_norm_strided_rows_and_mixed_weight_dtype(fast_ops, device):
    """q-norm sees [T, H, D] views of the QKV output; an fp32 weight promotes like native."""
    qkv = torch.randn(5, 3 * 4 * 32, device=device, dtype=torch.bfloat16)
    q = qkv[:, : 4 * 32].view(5, 4, 32)
    norm = RMSNorm(32).to(device)  # float32 weight, bf16 activations
    out = norm(q)
    assert out.dtype == torch.float32
    assert_close(out, norm.forward_native(q))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,d", [(6, 48), (1, 1030), (4, 7)])
def test_silu_and_mul_matches_native(fast_ops, device, dtype, rows, d):
    op = SiluAndMul()
    assert op.bound_forward == "forward_cuda"
    x = torch.randn(rows, 2 * d, device=device, dtype=dtype) * 4
    assert_close(op(x), op.forward_native(x))


def test_silu_and_mul_strided_input(fast_ops, device):
    op = SiluAndMul()
    x = torch.randn(16, 2 * 40, device=device)[::2]
    assert_close(op(x), op.forward_native(x))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads,kv_heads,head_dim", [(4, 2, 32), (3, 3, 64), (12, 1, 16)])
def test_rotary_matches_native_on_qkv_views(fast_ops, device, dtype, heads, kv_heads, head_dim):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
    rope = RotaryEmbedding(head_dim, 512, 500000.0, scaling).to(device)
    assert rope.bound_forward == "forward_cuda"
    tokens = 7
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    positions = torch.randint(0, 512, (tokens,), device=device)
    q_before, k_before = q.clone(), k.clone()
    q_out, k_out = rope(positions, q, k)
    q_ref, k_ref = rope.forward_native(positions, q, k)
    assert_close(q_out, q_ref)
    assert_close(k_out, k_ref)
    assert torch.equal(q, q_before) and torch.equal(k, k_before)  # out of place


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ids_shape", [(1,), (16,), (3, 5)])
def test_embedding_matches_native(fast_ops, device, dtype, ids_shape):
    from tessera.layers.embedding import EmbeddingLookup

    op = EmbeddingLookup()
    assert op.bound_forward == "forward_cuda"
    table = torch.randn(50, 1100, device=device, dtype=dtype)  # 1100: two column blocks
    ids = torch.randint(0, 50, ids_shape, device=device)
    out = op(ids, table)
    assert torch.equal(out, op.forward_native(ids, table))  # a copy: bit-exact
    # a strided table (a view) and ids in int32
    wide = torch.randn(50, 2 * 1100, device=device, dtype=dtype)
    assert torch.equal(op(ids.int(), wide[:, :1100]), op.forward_native(ids, wide[:, :1100]))


def test_embedding_out_of_range_id_reads_nothing(fast_ops, device):
    from tessera.layers.embedding import EmbeddingLookup

    table = torch.randn(8, 64, device=device)
    out = EmbeddingLookup()(torch.tensor([3, 8, -1, 7], device=device), table)
    assert torch.equal(out[0], table[3]) and torch.equal(out[3], table[7])
    assert not out[1].any() and not out[2].any()


def test_empty_batch(fast_ops, device):
    norm, act = _rmsnorm(32, torch.float32, device), SiluAndMul()
    rope = RotaryEmbedding(16, 32, 10000.0).to(device)
    empty = torch.empty(0, 32, device=device)
    assert norm(empty).shape == (0, 32)
    assert act(empty).shape == (0, 16)
    q, k = rope(torch.empty(0, dtype=torch.long, device=device),
                torch.empty(0, 2, 16, device=device), torch.empty(0, 1, 16, device=device))
    assert q.shape == (0, 2, 16) and k.shape == (0, 1, 16)
    from tessera.layers.embedding import EmbeddingLookup

    assert EmbeddingLookup()(torch.empty(0, dtype=torch.long, device=device),
                             torch.randn(4, 32, device=device)).shape == (0, 32)


# ---- real sizes on the GPU -------------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 4096])
def test_gpu_rms_norm_real_size(fast_ops, tokens):
    norm = _rmsnorm(4096, torch.bfloat16, "cuda")
    x = torch.randn(tokens, 4096, device="cuda", dtype=torch.bfloat16)
    residual = torch.randn_like(x)
    assert_close(norm(x), norm.forward_native(x))
    for fast, ref in zip(norm(x, residual), norm.forward_native(x, residual)):
        assert_close(fast, ref)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 16, 4096])
def test_gpu_embedding_real_size(fast_ops, tokens):
    from tessera.layers.embedding import EmbeddingLookup

    op = EmbeddingLookup()
    table = torch.randn(128256, 4096, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, 128256, (tokens,), device="cuda")
    assert torch.equal(op(ids, table), op.forward_native(ids, table))


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 4096])
def test_gpu_silu_and_mul_real_size(fast_ops, tokens):
    op = SiluAndMul()
    x = torch.randn(tokens, 2 * 14336, device="cuda", dtype=torch.bfloat16) * 3
    assert_close(op(x), op.forward_native(x))


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 4096])
def test_gpu_rotary_real_size(fast_ops, tokens):
    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    rope = RotaryEmbedding(128, 131072, 500000.0, scaling).to("cuda")
    qkv = torch.randn(tokens, (32 + 16) * 128, device="cuda", dtype=torch.bfloat16)
    q = qkv[:, : 32 * 128].view(tokens, 32, 128)
    k = qkv[:, 32 * 128: 40 * 128].view(tokens, 8, 128)
    positions = torch.randint(0, 131072, (tokens,), device="cuda")
    for fast, ref in zip(rope(positions, q, k), rope.forward_native(positions, q, k)):
        assert_close(fast, ref)
