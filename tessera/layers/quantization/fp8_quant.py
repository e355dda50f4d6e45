"""The FP8 ops of block-FP8 layers as modules, bound once like every op (MultiPlatformOp):

* `PerTokenGroupQuantFP8`: activations quantized per token in groups (tessera.ops.quant);
* `BlockFP8Linear`: x -> group-quantized x -> block-scaled W8A8 GEMM (tessera.ops.fp8_gemm);
* `Fp8MoEExperts`: the routed experts of a FusedMoE with block-FP8 weights.

Triton through `tessera::*` custom ops on CUDA and MUSA (torch_musa has no vendor kernels for
these, so MUSA binds the Triton path, compiled by its Triton backend), the torch references on
CPU. Under torch.compile each fast path is one opaque node per custom op (fake kernels in
tessera.ops.custom_ops).
"""
from __future__ import annotations

import torch

from tessera.layers.custom_op import MultiPlatformOp
from tessera.ops import custom_ops  # noqa: F401  (registers the tessera::* ops used here)
from tessera.ops.fp8_reference import (
    DEFAULT_EPS,
    per_token_group_quant_fp8_torch,
    w8a8_block_fp8_matmul_torch,
)


class PerTokenGroupQuantFP8(MultiPlatformOp):
    """Triton on CUDA/MUSA (`tessera::per_token_group_quant_fp8`), the torch reference on CPU."""

    def __init__(self, group_size: int = 128, eps: float = DEFAULT_EPS, *,
                 force_native: bool = False) -> None:
        super().__init__(force_native)
        self.group_size, self.eps = group_size, eps

    def forward_native(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return per_token_group_quant_fp8_torch(x, self.group_size, self.eps)

    def forward_cuda(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.ops.tessera.per_token_group_quant_fp8(x, self.group_size, self.eps)


def _pad_to_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """x with its last dim zero-padded to whole groups: a partial last group quantizes over its
    real values only (zeros do not change its amax), as the weight's partial last K block."""
    pad = -x.shape[-1] % group
    return x if pad == 0 else torch.nn.functional.pad(x, (0, pad))


class BlockFP8Linear(MultiPlatformOp):
    """y = dequant(quant(x)) @ dequant(weight)^T (+ bias) in x's dtype, for a float8_e4m3fn
    weight [N, K] with block scales `weight_scale_inv` [ceil(N/bn), ceil(K/bk)] and x [..., K]
    quantized per token in groups of bk (the last group partial when bk does not divide K)."""

    def __init__(self, block: tuple[int, int], *, force_native: bool = False) -> None:
        super().__init__(force_native)
        self.block = tuple(block)

    def forward_native(self, x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor,
                       bias: torch.Tensor | None = None) -> torch.Tensor:
        k = x.shape[-1]
        x_q, x_s = per_token_group_quant_fp8_torch(_pad_to_groups(x, self.block[1]),
                                                   self.block[1])
        out = w8a8_block_fp8_matmul_torch(x_q[..., :k], x_s, weight, scale_inv, self.block,
                                          x.dtype)
        return out if bias is None else out + bias

    def forward_cuda(self, x: torch.Tensor, weight: torch.Tensor, scale_inv: torch.Tensor,
                     bias: torch.Tensor | None = None) -> torch.Tensor:
        k = x.shape[-1]
        x_q, x_s = torch.ops.tessera.per_token_group_quant_fp8(_pad_to_groups(x, self.block[1]),
                                                              self.block[1], DEFAULT_EPS)
        if x_q.shape[-1] != k:  # the kernel reads K columns of a row-strided view
            x_q = x_q[..., :k]
        out = torch.ops.tessera.w8a8_block_fp8_matmul(x_q, x_s, weight, scale_inv,
                                                      self.block[0], self.block[1], x.dtype)
        return out if bias is None else out + bias


class Fp8MoEExperts(MultiPlatformOp):
    """The routed experts' output [T, H] for block-FP8 stacked weights w13 [E, 2I, H] / w2
    [E, H, I] and their block scales (formats: tessera.ops.triton.fused_moe_fp8)."""

    def __init__(self, block: tuple[int, int], *, force_native: bool = False) -> None:
        super().__init__(force_native)
        self.block = tuple(block)

    def forward_native(self, x, w13, w2, w13_scale_inv, w2_scale_inv, topk_weights, topk_ids):
        return torch.ops.tessera.fused_moe_fp8_torch(x, w13, w2, w13_scale_inv, w2_scale_inv,
                                                     topk_weights, topk_ids, *self.block)

    def forward_cuda(self, x, w13, w2, w13_scale_inv, w2_scale_inv, topk_weights, topk_ids):
        return torch.ops.tessera.fused_moe_fp8(x, w13, w2, w13_scale_inv, w2_scale_inv,
                                               topk_weights, topk_ids, *self.block)


__all__ = ["BlockFP8Linear", "Fp8MoEExperts", "PerTokenGroupQuantFP8"]
