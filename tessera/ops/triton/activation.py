"""SiluAndMul: out = silu(x[..., :d]) * x[..., d:], in one pass over the gate/up projection output."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from tessera.ops.triton.pdl import launch_options, use_pdl

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_stride, out_stride, d, BLOCK: tl.constexpr,
                         PDL: tl.constexpr):
    if PDL:  # see tessera.ops.triton.pdl
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    gate = tl.load(x_ptr + row * x_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_stride + d + cols, mask=mask, other=0.0).to(tl.float32)
    # F.silu rounds to the activation dtype before the product; so do we (bit-compatible paths)
    act = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * out_stride + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    assert x.shape[-1] % 2 == 0, "last dim must hold gate and up halves"
    d = x.shape[-1] // 2
    x2 = x.reshape(-1, 2 * d)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    out = torch.empty((*x.shape[:-1], d), dtype=x.dtype, device=x.device)
    n_rows = x2.shape[0]
    if n_rows == 0 or d == 0:
        return out
    out2 = out.view(-1, d)
    block = min(BLOCK, triton.next_power_of_2(d))
    grid = (n_rows, triton.cdiv(d, block))
    pdl = use_pdl(x.device)
    _silu_and_mul_kernel[grid](x2, out2, x2.stride(0), out2.stride(0), d, BLOCK=block, PDL=pdl,
                               num_warps=4, **launch_options(pdl))
    return out
