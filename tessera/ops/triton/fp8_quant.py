"""FP8 (e4m3fn) per-token-group quantization, as DeepSeek-style block-FP8 linear layers consume it.

Each run of `group_size` consecutive values in a row gets its own float32 scale
amax(|x|) / fp8_max, and x / scale is clamped into the fp8 range. One program per group.
Division is IEEE round-to-nearest (div_rn) so the kernel matches the torch reference exactly.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

FP8_DTYPE = torch.float8_e4m3fn


@triton.jit
def _group_quant_kernel(x_ptr, q_ptr, s_ptr, x_row_stride, groups_per_row, group_size,
                        eps, fp8_min, fp8_max, BLOCK: tl.constexpr):
    group = tl.program_id(0).to(tl.int64)
    row = group // groups_per_row
    col0 = (group % groups_per_row) * group_size
    cols = tl.arange(0, BLOCK)
    mask = cols < group_size
    x = tl.load(x_ptr + row * x_row_stride + col0 + cols, mask=mask, other=0.0).to(tl.float32)
    amax = tl.maximum(tl.max(tl.abs(x), axis=0), eps)
    scale = tl.div_rn(amax, fp8_max)
    q = tl.clamp(tl.div_rn(x, scale), fp8_min, fp8_max)
    tl.store(q_ptr + row * (groups_per_row * group_size) + col0 + cols,
             q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(s_ptr + group, scale)


def per_token_group_quant_fp8(x: torch.Tensor, group_size: int,
                              eps: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., H] -> (x_q [..., H] float8_e4m3fn, scales [..., H // group_size] float32)."""
    hidden = x.shape[-1]
    assert hidden % group_size == 0, f"hidden {hidden} is not a multiple of group {group_size}"
    x2 = x.reshape(-1, hidden)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    groups_per_row = hidden // group_size
    x_q = torch.empty(x.shape, dtype=FP8_DTYPE, device=x.device)
    scales = torch.empty((*x.shape[:-1], groups_per_row), dtype=torch.float32, device=x.device)
    n_groups = x2.shape[0] * groups_per_row
    if n_groups == 0:
        return x_q, scales
    finfo = torch.finfo(FP8_DTYPE)
    _group_quant_kernel[(n_groups,)](
        x2, x_q, scales, x2.stride(0), groups_per_row, group_size, eps, finfo.min, finfo.max,
        BLOCK=triton.next_power_of_2(group_size), num_warps=1 if group_size <= 128 else 4)
    return x_q, scales
