"""FP8 math in plain PyTorch: the references of the FP8 kernels and the block (de)quantizers.

Nothing here launches a kernel or registers an op, so every FP8 module (the dispatchers in
tessera.ops.quant and tessera.ops.fp8_gemm, the MoE reference in tessera.ops.moe) can import it.

Formats, as in HF "fp8" checkpoints with `weight_block_size: [bn, bk]` (DeepSeek-V3 and the
Qwen3 FP8 releases use [128, 128]):

* a weight W [N, K] is stored as float8_e4m3fn `weight` [N, K] plus `weight_scale_inv`
  [ceil(N / bn), ceil(K / bk)] float32, one scale per block, and dequantizes as
  W[n, k] = weight[n, k] * weight_scale_inv[n // bn, k // bk]. ("scale_inv" because it is the
  inverse of the factor the quantizer multiplied by: it is what multiplies back.)
* activations x [M, K] are quantized per token in groups of bk columns:
  x[m, k] ~= x_q[m, k] * x_s[m, k // bk], x_s = amax(|group|) / fp8_max.
"""
from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max
DEFAULT_EPS = 1e-10  # floor on a group's amax so an all-zero group gets a finite scale


def per_token_group_quant_fp8_torch(x: torch.Tensor, group_size: int,
                                    eps: float = DEFAULT_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., H] -> (x_q [..., H] float8_e4m3fn, scales [..., H // group_size] float32) with
    x ~= x_q * scale per group and scale = max(amax(|group|), eps) / fp8_max."""
    hidden = x.shape[-1]
    if hidden % group_size != 0:
        raise ValueError(f"hidden size {hidden} is not a multiple of group_size {group_size}")
    finfo = torch.finfo(FP8_DTYPE)
    groups = x.to(torch.float32).reshape(*x.shape[:-1], hidden // group_size, group_size)
    amax = groups.abs().amax(dim=-1, keepdim=True).clamp(min=eps)
    # a tensor divisor: PyTorch turns division by a Python scalar into multiplication by its
    # reciprocal on CUDA, which is not the IEEE division the kernel (and the definition) uses
    scales = amax / torch.full_like(amax, finfo.max)
    x_q = (groups / scales).clamp(finfo.min, finfo.max).to(FP8_DTYPE)
    return x_q.reshape(x.shape), scales.squeeze(-1)


def fp8_round_trip(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """x quantized per token in groups of `group_size` (e4m3, float32 scales) and dequantized:
    exactly the values the FP8 kernels compute with."""
    q, scales = per_token_group_quant_fp8_torch(x, group_size)
    groups = q.to(torch.float32).reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    return (groups * scales.unsqueeze(-1)).reshape(x.shape)


def _expand_blocks(scales: torch.Tensor, block: tuple[int, int], shape: torch.Size
                   ) -> torch.Tensor:
    """Per-block scales [.., ceil(N/bn), ceil(K/bk)] -> per-element [.., N, K]."""
    bn, bk = block
    full = scales.repeat_interleave(bn, dim=-2).repeat_interleave(bk, dim=-1)
    return full[..., :shape[-2], :shape[-1]]


def dequantize_block_fp8(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int],
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """weight [.., N, K] fp8 and scale_inv [.., ceil(N/bn), ceil(K/bk)] -> [.., N, K] `dtype`
    (works on stacked expert weights too: leading dims are kept)."""
    full = _expand_blocks(scale_inv.to(torch.float32), block, weight.shape)
    return (weight.to(torch.float32) * full).to(dtype)


def quantize_block_fp8(weight: torch.Tensor, block: tuple[int, int]
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """weight [.., N, K] (any float dtype) -> (fp8 [.., N, K], scale_inv [.., ceil(N/bn),
    ceil(K/bk)] float32) with scale_inv = amax(|block|) / fp8_max: each block's largest value
    lands on the top of the e4m3 range, and dequantize_block_fp8 undoes it within e4m3's 2^-4
    relative rounding. An all-zero block gets scale 1 (anything finite dequantizes it to 0)."""
    bn, bk = block
    *lead, n, k = weight.shape
    pad_n, pad_k = -n % bn, -k % bk
    w = torch.nn.functional.pad(weight.to(torch.float32), (0, pad_k, 0, pad_n))
    blocks = w.reshape(*lead, (n + pad_n) // bn, bn, (k + pad_k) // bk, bk)
    amax = blocks.abs().amax(dim=(-3, -1))
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    full = _expand_blocks(scale_inv, block, weight.shape)
    q = (weight.to(torch.float32) / full).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale_inv


def w8a8_block_fp8_matmul_torch(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                                b_scales: torch.Tensor, block: tuple[int, int],
                                out_dtype: torch.dtype) -> torch.Tensor:
    """The reference: dequantize both operands to float32, one matmul, cast to out_dtype.
    a [..., K] fp8, a_scales [..., K / bk], b [N, K] fp8, b_scales [ceil(N/bn), ceil(K/bk)]."""
    bk = block[1]
    a_full = a.to(torch.float32) * a_scales.to(torch.float32).repeat_interleave(bk, dim=-1)[
        ..., :a.shape[-1]]
    return (a_full @ dequantize_block_fp8(b, b_scales, block).t()).to(out_dtype)


__all__ = ["DEFAULT_EPS", "FP8_DTYPE", "FP8_MAX", "dequantize_block_fp8", "fp8_round_trip",
           "per_token_group_quant_fp8_torch", "quantize_block_fp8",
           "w8a8_block_fp8_matmul_torch"]
