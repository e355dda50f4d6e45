"""W8A8 block-scaled FP8 GEMM: C = dequant(A) @ dequant(B)^T, as block-FP8 linear layers run it.

Formats (DeepSeek-V3 / HF "fp8" checkpoints with weight_block_size [bn, bk], usually [128, 128]):

* A [M, K] float8_e4m3fn with per-token-group scales As [M, K / bk] float32: row m's values
  k in [g*bk, (g+1)*bk) dequantize to A[m, k] * As[m, g] (tessera.ops.quant's group quantizer);
* B [N, K] float8_e4m3fn (the weight, nn.Linear layout) with block scales Bs [ceil(N / bn),
  ceil(K / bk)] float32 (the checkpoint's `weight_scale_inv`): B[n, k] dequantizes to
  B[n, k] * Bs[n // bn, k // bk];
* C [M, N] in bf16, fp16 or fp32.

One program computes a [BLOCK_M, BLOCK_N] tile of C. Its K loop steps by exactly bk, so each step
sees one A scale per row and one B scale per column: the step's partial product (fp8 x fp8 with
fp32 accumulation) is multiplied by As[:, g] * Bs[n // bn, g] and added to the fp32 accumulator.
Where the GPU has no FP8 tensor cores (FP8_DOT False) the tiles are upcast to float32 first
(TF32 dots on the GPU; e4m3's 3 mantissa bits fit TF32's 10 exactly, so the products are the
same up to accumulation order). Triton's CPU interpreter runs both forms.
"""
from __future__ import annotations

import dataclasses

import torch
import triton
import triton.language as tl

FP8_DTYPE = torch.float8_e4m3fn


@dataclasses.dataclass(frozen=True)
class BlockFP8GemmConfig:
    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 8  # programs along M that share B tiles in L2 (grouped launch order)


def default_config(m: int, n: int) -> BlockFP8GemmConfig:
    """Block sizes by row count. Not tuned on a GPU yet: decode-sized M wants short tiles (every
    row past M is wasted work), prefill-sized M the 64x128 tiles common for FP8 GEMMs. BLOCK_N
    stays at most the usual 128-wide scale block so a tile's columns share few B scales."""
    if m <= 16:
        return BlockFP8GemmConfig(block_m=16, block_n=64, num_warps=4, num_stages=4)
    if m <= 64:
        return BlockFP8GemmConfig(block_m=32, block_n=64, num_warps=4, num_stages=4)
    return BlockFP8GemmConfig(block_m=64, block_n=128, num_warps=4, num_stages=3)


@triton.jit
def _w8a8_block_fp8_kernel(a_ptr, b_ptr, c_ptr, as_ptr, bs_ptr, M, N, K, stride_am, stride_bn,
                           stride_cm, stride_as_m, stride_bs_n, GROUP_N: tl.constexpr,
                           BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                           GROUP_M: tl.constexpr, FP8_DOT: tl.constexpr):
    # grouped ordering: GROUP_M row tiles run next to each other over the same B column tiles
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * num_pid_n
    first_m = (pid // per_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % per_group) % group_rows
    pid_n = (pid % per_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_mask = offs_m < M
    n_mask = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * stride_am + offs_k[None, :]
    # B is [N, K] row-major; read a [BLOCK_K, BLOCK_N] tile of B^T
    b_ptrs = b_ptr + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None]
    as_ptrs = as_ptr + offs_m * stride_as_m
    bs_ptrs = bs_ptr + (offs_n // GROUP_N) * stride_bs_n
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(tl.cdiv(K, BLOCK_K)):
        k_mask = offs_k < K - g * BLOCK_K
        a = tl.load(a_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        a_s = tl.load(as_ptrs + g, mask=m_mask, other=0.0)
        b_s = tl.load(bs_ptrs + g, mask=n_mask, other=0.0)
        if FP8_DOT:
            part = tl.dot(a, b)
        else:
            part = tl.dot(a.to(tl.float32), b.to(tl.float32))
        acc += part * a_s[:, None] * b_s[None, :]
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_n[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


def w8a8_block_fp8_matmul(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                          b_scales: torch.Tensor, block_n: int, block_k: int,
                          out_dtype: torch.dtype, fp8_dot: bool = True,
                          config: BlockFP8GemmConfig | None = None) -> torch.Tensor:
    """a [..., K] fp8, a_scales [..., K / block_k], b [N, K] fp8, b_scales [ceil(N / block_n),
    ceil(K / block_k)] -> [..., N] out_dtype (the formats are the module docstring's)."""
    k = a.shape[-1]
    n = b.shape[0]
    assert b.shape[1] == k and a.dtype == FP8_DTYPE and b.dtype == FP8_DTYPE, (
        f"A {tuple(a.shape)} {a.dtype} and B {tuple(b.shape)} {b.dtype}")
    assert block_k in (16, 32, 64, 128, 256), f"block_k {block_k}: the K step is one scale block"
    a2 = a.reshape(-1, k)
    m = a2.shape[0]
    as2 = a_scales.reshape(m, -1)
    assert as2.shape[1] == triton.cdiv(k, block_k), f"A scales {tuple(a_scales.shape)}"
    assert b_scales.shape == (triton.cdiv(n, block_n), triton.cdiv(k, block_k)), (
        f"B scales {tuple(b_scales.shape)} for B {tuple(b.shape)}, blocks [{block_n}, {block_k}]")
    out = torch.empty((*a.shape[:-1], n), dtype=out_dtype, device=a.device)
    if m == 0:
        return out
    a2 = a2 if a2.stride(-1) == 1 else a2.contiguous()
    b = b if b.stride(-1) == 1 else b.contiguous()
    as2 = as2.contiguous()
    b_scales = b_scales.contiguous()
    cfg = config or default_config(m, n)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n),)
    _w8a8_block_fp8_kernel[grid](
        a2, b, out, as2, b_scales, m, n, k, a2.stride(0), b.stride(0), n, as2.stride(0),
        b_scales.stride(0), GROUP_N=block_n,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=block_k, GROUP_M=cfg.group_m,
        FP8_DOT=fp8_dot, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
    return out


__all__ = ["BlockFP8GemmConfig", "default_config", "w8a8_block_fp8_matmul"]
