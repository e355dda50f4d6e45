"""y = x @ W.T (+ b) for ONE row of x: a bandwidth-bound matrix-vector product.

At one decode token every linear layer is a GEMV: the weight is read once and each element is
used once, so the time is the weight's bytes over memory bandwidth plus the launch. A program
owns BLOCK_N output features: it streams its [BLOCK_N, K] strip of W in [BLOCK_N, BLOCK_K] tiles
(contiguous along K: 16-byte loads), multiplies by the matching slice of x and accumulates in a
float32 [BLOCK_N, BLOCK_K] tile, reduced across K once at the end (no per-tile shuffles).

Measured on the H200 (`benchmarks/decode_opt/profile_decode.py gemv`, bf16, weights rotated past
L2, inside a CUDA graph; that sweep's JSON was not kept): against cuBLAS 1.1-3.8x faster on the
qwen3-0.6b shapes (o_proj 12.5 -> 3.3 us) and 1.03-1.27x on llama3-8b's, 4-5% on the LM heads.
Splitting K across programs never won there, so there is none. `gemv_config` encodes the sweep's
winners. End to end: benchmarks/results/2026-11-23_h200_s2_decode_variants.txt.

Two input stages fold the decode layer's small kernels into the GEMV that consumes them (three
launches fewer per layer at bs=1): ADD_RMS_NORM computes rms_norm(x + residual) * w as the input
(every program normalises the row itself; program 0 writes the new residual), SILU_MUL computes
silu(gate) * up from the gate/up projection's output. Their rounding follows the unfused kernels.

With PDL (tessera.ops.triton.pdl) the program loads its first weight tile before waiting for the
previous kernel: the weight stream starts while the previous kernel drains. It lets its own
dependent launch only after its weight loop (pdl.GEMV_TRIGGER, measured there).
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

from tessera.ops.triton import pdl as pdl_module
from tessera.ops.triton.pdl import launch_options, use_pdl

# What the GEMV multiplies W by (its "input stage"), a constexpr of the kernel:
PLAIN = tl.constexpr(0)         # x as given
ADD_RMS_NORM = tl.constexpr(1)  # rms_norm(x + residual) * norm_weight: the norm folded in
SILU_MUL = tl.constexpr(2)      # silu(x[:K]) * x[K:]: the MLP's activation folded into down_proj


@triton.jit
def _input_tile(x_ptr, r_ptr, nw_ptr, offs, mask, K, rstd,
                INPUT: tl.constexpr, HAS_RESIDUAL: tl.constexpr):
    """The float32 input values at `offs`, rounded exactly where the unfused ops round (the
    rmsnorm and activation kernels): so the fused and unfused paths differ only by the norm's
    float32 sum order."""
    dtype = x_ptr.dtype.element_ty
    if INPUT == ADD_RMS_NORM:
        s = tl.load(x_ptr + offs, mask=mask, other=0.0)
        if HAS_RESIDUAL:
            s = (s.to(tl.float32) + tl.load(r_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                 ).to(dtype)
        normed = (s.to(tl.float32) * rstd).to(dtype).to(tl.float32)
        w = tl.load(nw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        x = (w * normed).to(dtype).to(tl.float32)
    elif INPUT == SILU_MUL:
        gate = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        up = tl.load(x_ptr + K + offs, mask=mask, other=0.0).to(tl.float32)
        act = (gate / (1.0 + tl.exp(-gate))).to(dtype).to(tl.float32)
        x = (act * up).to(dtype).to(tl.float32)
    else:
        x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    return x


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, K, stride_wn,
                 r_ptr, nw_ptr, r_out_ptr, eps,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                 EVEN: tl.constexpr, PDL: tl.constexpr, INPUT: tl.constexpr,
                 HAS_RESIDUAL: tl.constexpr, NORM_BLOCK: tl.constexpr, PDL_LATE: tl.constexpr):
    pid = tl.program_id(0)
    offs_n = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :]
    acc = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    if PDL:
        # weights are never written by a predecessor: the first tile may load before the wait
        if not PDL_LATE:
            tl.extra.cuda.gdc_launch_dependents()
        w0 = tl.load(w_ptrs, mask=mask_n[:, None] & (offs_k < K)[None, :], other=0.0)
        tl.extra.cuda.gdc_wait()
    rstd = 0.0
    if INPUT == ADD_RMS_NORM:
        # the whole row once: its statistics, and (program 0) the new residual x + residual
        cols = tl.arange(0, NORM_BLOCK)
        mask_c = cols < K
        s = tl.load(x_ptr + cols, mask=mask_c, other=0.0)
        if HAS_RESIDUAL:
            s = (s.to(tl.float32) + tl.load(r_ptr + cols, mask=mask_c, other=0.0).to(tl.float32)
                 ).to(x_ptr.dtype.element_ty)
        tl.store(r_out_ptr + cols, s, mask=mask_c & (pid == 0))
        sf = s.to(tl.float32)
        rstd = tl.rsqrt(tl.sum(sf * sf, axis=0) / K + eps)
    first = 0
    if PDL:
        mask_k0 = offs_k < K
        x0 = _input_tile(x_ptr, r_ptr, nw_ptr, offs_k, mask_k0, K, rstd, INPUT, HAS_RESIDUAL)
        acc += w0.to(tl.float32) * x0[None, :]
        first = BLOCK_K
    for k0 in range(first, K, BLOCK_K):
        if EVEN:
            w = tl.load(w_ptrs + k0)
        else:
            mask_k = (k0 + offs_k) < K
            w = tl.load(w_ptrs + k0, mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        x = _input_tile(x_ptr, r_ptr, nw_ptr, k0 + offs_k, (k0 + offs_k) < K, K, rstd,
                        INPUT, HAS_RESIDUAL)
        acc += w.to(tl.float32) * x[None, :]
    if PDL and PDL_LATE:
        tl.extra.cuda.gdc_launch_dependents()
    y = tl.sum(acc, axis=1)
    if HAS_BIAS:
        y += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs_n, y.to(y_ptr.dtype.element_ty), mask=mask_n)


@dataclasses.dataclass(frozen=True)
class GemvConfig:
    block_n: int = 4
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 1


def gemv_config(n: int, k: int) -> GemvConfig:
    """Tile config by weight shape [N, K]: the H200 sweep's winners (within 1-2% of each shape's
    best of 46 configs; benchmarks/decode_opt/profile_decode.py gemv)."""
    if n <= 2048:  # few output rows: 2 rows per program keeps >= 512 programs in flight
        cfg = GemvConfig(2, 1024, 4, 1)
    elif k >= 4096 and n <= 4096:  # long rows: 16 rows x 1024 per program, 8 warps
        cfg = GemvConfig(16, 1024, 8, 3)
    elif n <= 4096:
        cfg = GemvConfig(4, 512, 4, 3)
    elif k >= 4096 and n <= 8192:  # llama3-8b's qkv: chosen in the layer chain with PDL
        cfg = GemvConfig(16, 512, 8, 3)
    elif n <= 8192:
        cfg = GemvConfig(8, 512, 4, 3)
    else:  # LM heads, wide MLP projections
        cfg = GemvConfig(16, 256, 4, 1)
    block_k = min(cfg.block_k, max(16, triton.next_power_of_2(k)))
    return dataclasses.replace(cfg, block_k=block_k)


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
            config: GemvConfig | None, input_stage: int, residual: torch.Tensor | None = None,
            norm_weight: torch.Tensor | None = None, eps: float = 0.0,
            residual_out: torch.Tensor | None = None) -> torch.Tensor:
    n, k = weight.shape
    assert weight.stride(1) == 1 and x.is_contiguous()
    config = config or gemv_config(n, k)
    y = torch.empty((*x.shape[:-1], n), dtype=x.dtype, device=x.device)
    if n == 0:
        return y
    if k == 0:
        return y.zero_() if bias is None else y.copy_(bias.expand_as(y))
    pdl = use_pdl(x.device)
    _gemv_kernel[(triton.cdiv(n, config.block_n),)](
        x, weight, bias if bias is not None else weight, y, n, k, weight.stride(0),
        residual if residual is not None else x, norm_weight if norm_weight is not None else x,
        residual_out if residual_out is not None else y, eps,
        HAS_BIAS=bias is not None, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        EVEN=n % config.block_n == 0 and k % config.block_k == 0, PDL=pdl, INPUT=input_stage,
        HAS_RESIDUAL=residual is not None,
        NORM_BLOCK=triton.next_power_of_2(k) if input_stage == ADD_RMS_NORM.value else 1,
        PDL_LATE=pdl and pdl_module.GEMV_TRIGGER == "late",
        num_warps=config.num_warps, num_stages=config.num_stages, **launch_options(pdl))
    return y


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         config: GemvConfig | None = None) -> torch.Tensor:
    """x [1, K] or [K] (contiguous), weight [N, K] (contiguous rows), bias [N] -> y [1, N] / [N]
    in x's dtype, accumulated in float32."""
    assert x.shape[-1] == weight.shape[1] and x.numel() == weight.shape[1], "gemv takes a single row"
    return _launch(x, weight, bias, config, PLAIN.value)


MAX_NORM_HIDDEN = 65536  # the norm's row is held in one program's registers, as in rmsnorm.py


def gemv_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
                  eps: float, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  config: GemvConfig | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(linear(rms_norm(x + residual) * norm_weight), x + residual) for ONE row: the
    fused_add_rms_norm -> gemv pair of a decoder layer as one kernel. Without `residual` the norm
    is of x alone and the second output is a copy of x. Every program normalises the row itself
    (it is K values, read from L2); program 0 writes the new residual."""
    k = weight.shape[1]
    assert x.shape[-1] == k and x.numel() == k, "gemv_rms_norm takes a single row"
    assert k <= MAX_NORM_HIDDEN, f"gemv_rms_norm supports K <= {MAX_NORM_HIDDEN}, got {k}"
    assert norm_weight.shape == (k,) and norm_weight.dtype == x.dtype, "norm weight: [K], x's dtype"
    if residual is not None:
        assert residual.shape == x.shape and residual.dtype == x.dtype and residual.is_contiguous()
    residual_out = torch.empty_like(x)
    if weight.shape[0] == 0 or k == 0:  # no program would run: the residual still is x + r
        residual_out.copy_(x if residual is None else x + residual)
    y = _launch(x, weight, bias, config, ADD_RMS_NORM.value, residual, norm_weight, eps, residual_out)
    return y, residual_out


def gemv_silu_mul(gate_up: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                  config: GemvConfig | None = None) -> torch.Tensor:
    """linear(silu(gate_up[:K]) * gate_up[K:]) for ONE row [1, 2K]: SiluAndMul -> gemv as one
    kernel (the MLP's down projection reading the gate/up projection's output directly)."""
    k = weight.shape[1]
    assert gate_up.shape[-1] == 2 * k and gate_up.numel() == 2 * k, \
        "gemv_silu_mul takes one row of gate and up halves"
    return _launch(gate_up, weight, bias, config, SILU_MUL.value)
