"""FP8 per-token-group quantization: the Triton kernel against its torch reference, and the
reference against the definition (x ~= x_q * scale within fp8 rounding)."""
from __future__ import annotations

import pytest
import torch

from tessera.layers.quantization.fp8_quant import PerTokenGroupQuantFP8
from tessera.ops import per_token_group_quant_fp8_torch

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


def _inputs(shape, dtype, device):
    x = torch.randn(shape, device=device, dtype=torch.float32)
    x[..., :5] *= 40  # outliers in one group: its scale must differ from its neighbours'
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape,group", [((6, 256), 64), ((3, 2, 128), 128), ((5, 96), 32)])
def test_kernel_matches_reference(fast_ops, device, dtype, shape, group):
    op = PerTokenGroupQuantFP8(group)
    assert op.bound_forward == "forward_cuda"
    x = _inputs(shape, dtype, device)
    x_q, scales = op(x)
    ref_q, ref_scales = per_token_group_quant_fp8_torch(x, group)
    assert x_q.dtype == torch.float8_e4m3fn and scales.dtype == torch.float32
    assert x_q.shape == x.shape and scales.shape == (*shape[:-1], shape[-1] // group)
    torch.testing.assert_close(scales, ref_scales, rtol=0, atol=0)
    torch.testing.assert_close(x_q.float(), ref_q.float(), rtol=0, atol=0)


def test_reference_round_trips_within_fp8_precision():
    x = _inputs((4, 512), torch.float32, "cpu")
    x_q, scales = per_token_group_quant_fp8_torch(x, 128)
    restored = (x_q.float().view(4, 4, 128) * scales.unsqueeze(-1)).view(4, 512)
    # e4m3 keeps 3 mantissa bits: relative error <= 2^-4 for normal numbers
    amax = x.abs().view(4, 4, 128).amax(-1, keepdim=True).expand(4, 4, 128).reshape(4, 512)
    assert ((restored - x).abs() <= x.abs() * 2 ** -4 + amax / FP8_MAX).all()
    # each group's largest value maps to the top of the fp8 range
    assert torch.allclose(x_q.float().view(4, 4, 128).abs().amax(-1), torch.full((4, 4), FP8_MAX))


def test_all_zero_group_has_finite_scale(fast_ops, device):
    x = torch.zeros(2, 128, device=device)
    x[1, 64:] = 1.0
    x_q, scales = PerTokenGroupQuantFP8(64)(x)
    assert torch.isfinite(scales).all() and (scales > 0).all()
    assert (x_q.float()[0] == 0).all()


def test_rejects_hidden_not_multiple_of_group():
    with pytest.raises(ValueError, match="multiple of group_size"):
        per_token_group_quant_fp8_torch(torch.randn(2, 100), 64)


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [1, 4096])
def test_gpu_kernel_matches_reference_real_size(fast_ops, tokens):
    x = _inputs((tokens, 4096), torch.bfloat16, "cuda")
    x_q, scales = PerTokenGroupQuantFP8(128)(x)
    ref_q, ref_scales = per_token_group_quant_fp8_torch(x, 128)
    torch.testing.assert_close(scales, ref_scales, rtol=0, atol=0)
    torch.testing.assert_close(x_q.float(), ref_q.float(), rtol=0, atol=0)
