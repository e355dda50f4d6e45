"""RMSNorm and fused residual-add + RMSNorm: one program per row, the whole row in registers.

The rounding follows the native path step for step (residual sum rounded to the activation dtype,
normalized value rounded before the weight multiply), so the fast and native paths agree to the
last bit wherever the math allows; statistics are float32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.ops.triton.pdl import launch_options, use_pdl

MAX_HIDDEN = 65536  # a row must fit in one program's registers


@triton.jit
def _rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, res_out_ptr,
                     x_stride, res_stride, out_stride, res_out_stride,
                     n_cols, eps,
                     HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    if PDL:  # see tessera.ops.triton.pdl
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * res_stride + cols, mask=mask, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(res_out_ptr + row * res_out_stride + cols, x, mask=mask)
    xf = x.to(tl.float32)
    variance = tl.sum(xf * xf, axis=0) / n_cols
    rstd = tl.rsqrt(variance + eps)
    normed = (xf * rstd).to(x_ptr.dtype.element_ty).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, (w * normed).to(out_ptr.dtype.element_ty),
             mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(x: torch.Tensor, weight: torch.Tensor, eps: float,
            residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    hidden = x.shape[-1]
    assert hidden <= MAX_HIDDEN, f"RMSNorm kernel supports hidden <= {MAX_HIDDEN}, got {hidden}"
    assert weight.shape == (hidden,), "weight must be [hidden]"
    x2 = _rows(x)
    # native computes `weight * x.to(dtype)`, whose dtype is the promotion of the two
    out = torch.empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype), device=x.device)
    out2 = out.view(-1, hidden)
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype, "residual must match x"
        res2 = _rows(residual)
        res_out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
        res_out2 = res_out.view(-1, hidden)
    else:
        res_out = None
        res2 = res_out2 = x2  # unused by the kernel (HAS_RESIDUAL=False)
    n_rows = x2.shape[0]
    if n_rows == 0:
        return out, res_out
    block = triton.next_power_of_2(hidden)
    num_warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    pdl = use_pdl(x.device)
    _rms_norm_kernel[(n_rows,)](
        x2, res2, weight, out2, res_out2,
        x2.stride(0), res2.stride(0), out2.stride(0), res_out2.stride(0),
        hidden, eps,
        HAS_RESIDUAL=residual is not None, BLOCK=block, PDL=pdl, num_warps=num_warps,
        **launch_options(pdl))
    return out, res_out


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return _launch(x, weight, eps, None)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(rms_norm(x + residual), x + residual), the sum taken in the activation dtype."""
    out, res_out = _launch(x, weight, eps, residual)
    assert res_out is not None
    return out, res_out
