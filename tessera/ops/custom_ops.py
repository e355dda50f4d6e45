"""The `tessera::*` custom ops: the only way fast paths reach Triton kernels.

Each op is a torch.library custom op with a fake kernel. Under torch.compile, Dynamo records a call
as one opaque graph node and uses the fake kernel for output shapes/dtypes/strides; the real
implementation runs only when the graph runs. All ops are functional (mutates_args=()): they
allocate their outputs, so no functionalization copies are inserted around them and the piecewise
compiler can treat them like any other node.

Fake kernels must describe exactly what the real kernels return: contiguous tensors of the shapes
below. The Triton modules are imported on first call, keeping `import tessera.ops` Triton-free.
"""
from __future__ import annotations

import torch


@torch.library.custom_op("tessera::rms_norm", mutates_args=())
def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    from tessera.ops.triton.rmsnorm import rms_norm as kernel

    return kernel(x, weight, eps)


@rms_norm.register_fake
def _rms_norm_fake(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))


@torch.library.custom_op("tessera::fused_add_rms_norm", mutates_args=())
def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    from tessera.ops.triton.rmsnorm import fused_add_rms_norm as kernel

    return kernel(x, residual, weight, eps)


@fused_add_rms_norm.register_fake
def _fused_add_rms_norm_fake(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                             eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    out = x.new_empty(x.shape, dtype=torch.promote_types(x.dtype, weight.dtype))
    return out, x.new_empty(x.shape)


@torch.library.custom_op("tessera::embedding", mutates_args=())
def embedding(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    from tessera.ops.triton.embedding import embedding as kernel

    return kernel(ids, weight)


@embedding.register_fake
def _embedding_fake(ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weight.new_empty((ids.shape[0], weight.shape[1]))


@torch.library.custom_op("tessera::silu_and_mul", mutates_args=())
def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    from tessera.ops.triton.activation import silu_and_mul as kernel

    return kernel(x)


@silu_and_mul.register_fake
def _silu_and_mul_fake(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], x.shape[-1] // 2))


@torch.library.custom_op("tessera::rotary_embedding", mutates_args=())
def rotary_embedding(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                     cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from tessera.ops.triton.rotary import rotary_embedding as kernel

    return kernel(positions, q, k, cos_sin_cache)


@rotary_embedding.register_fake
def _rotary_embedding_fake(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                           cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape)


@torch.library.custom_op("tessera::qk_norm_rope", mutates_args=())
def qk_norm_rope(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                 q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
                 cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from tessera.ops.triton.qk_norm_rope import qk_norm_rope as kernel

    return kernel(positions, q, k, q_weight, k_weight, eps, cos_sin_cache)


@qk_norm_rope.register_fake
def _qk_norm_rope_fake(positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                       q_weight: torch.Tensor, k_weight: torch.Tensor, eps: float,
                       cos_sin_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dtype = torch.promote_types(q.dtype, q_weight.dtype)
    return q.new_empty(q.shape, dtype=dtype), k.new_empty(k.shape, dtype=dtype)


@torch.library.custom_op("tessera::gemv", mutates_args=())
def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    from tessera.ops.triton.gemv import gemv as kernel

    return kernel(x, weight, bias)


@gemv.register_fake
def _gemv_fake(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@torch.library.custom_op("tessera::gemv_rms_norm", mutates_args=())
def gemv_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
                  eps: float, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    from tessera.ops.triton.gemv import gemv_rms_norm as kernel

    return kernel(x, residual, norm_weight, eps, weight, bias)


@gemv_rms_norm.register_fake
def _gemv_rms_norm_fake(x: torch.Tensor, residual: torch.Tensor | None,
                        norm_weight: torch.Tensor, eps: float, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return x.new_empty((*x.shape[:-1], weight.shape[0])), x.new_empty(x.shape)


@torch.library.custom_op("tessera::gemv_silu_mul", mutates_args=())
def gemv_silu_mul(gate_up: torch.Tensor, weight: torch.Tensor,
                  bias: torch.Tensor | None) -> torch.Tensor:
    from tessera.ops.triton.gemv import gemv_silu_mul as kernel

    return kernel(gate_up, weight, bias)


@gemv_silu_mul.register_fake
def _gemv_silu_mul_fake(gate_up: torch.Tensor, weight: torch.Tensor,
                        bias: torch.Tensor | None) -> torch.Tensor:
    return gate_up.new_empty((*gate_up.shape[:-1], weight.shape[0]))


@torch.library.custom_op("tessera::per_token_group_quant_fp8", mutates_args=())
def per_token_group_quant_fp8(x: torch.Tensor, group_size: int,
                              eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    from tessera.ops.triton.fp8_quant import per_token_group_quant_fp8 as kernel

    return kernel(x, group_size, eps)


@per_token_group_quant_fp8.register_fake
def _per_token_group_quant_fp8_fake(x: torch.Tensor, group_size: int,
                                    eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    x_q = x.new_empty(x.shape, dtype=torch.float8_e4m3fn)
    scales = x.new_empty((*x.shape[:-1], x.shape[-1] // group_size), dtype=torch.float32)
    return x_q, scales


@torch.library.custom_op("tessera::fused_moe", mutates_args=())
def fused_moe(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
    from tessera.ops.triton.fused_moe import fused_moe as kernel

    return kernel(x, w13, w2, topk_weights, topk_ids)


@torch.library.custom_op("tessera::fused_moe_torch", mutates_args=())
def fused_moe_torch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                    topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    """The reference (tessera.ops.moe) as one opaque op: its per-expert loop gathers a
    data-dependent number of rows, which torch.compile(fullgraph=True) cannot trace."""
    from tessera.ops.moe import fused_moe_torch as reference

    return reference(x, w13, w2, topk_weights, topk_ids)


@fused_moe.register_fake
@fused_moe_torch.register_fake
def _fused_moe_fake(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                    topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0], w2.shape[1]))


@torch.library.custom_op("tessera::fused_moe_fp8", mutates_args=())
def fused_moe_fp8(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                  w13_scale_inv: torch.Tensor, w2_scale_inv: torch.Tensor,
                  topk_weights: torch.Tensor, topk_ids: torch.Tensor, block_n: int,
                  block_k: int) -> torch.Tensor:
    """Block-FP8 experts (formats: tessera.ops.triton.fused_moe_fp8)."""
    from tessera.ops.triton.fused_moe_fp8 import fused_moe_fp8 as kernel
    from tessera.platforms import platform_of

    fp8_dot = platform_of(x.device).has_fp8_mma(x.device)
    return kernel(x, w13, w2, w13_scale_inv, w2_scale_inv, topk_weights, topk_ids, block_n,
                  block_k, fp8_dot=fp8_dot)


@torch.library.custom_op("tessera::fused_moe_fp8_torch", mutates_args=())
def fused_moe_fp8_torch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                        w13_scale_inv: torch.Tensor, w2_scale_inv: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor, block_n: int,
                        block_k: int) -> torch.Tensor:
    """The block-FP8 experts' reference (tessera.ops.moe) as one opaque op, like
    fused_moe_torch."""
    from tessera.ops.moe import fused_moe_fp8_torch as reference

    return reference(x, w13, w2, w13_scale_inv, w2_scale_inv, topk_weights, topk_ids,
                     (block_n, block_k))


@fused_moe_fp8.register_fake
@fused_moe_fp8_torch.register_fake
def _fused_moe_fp8_fake(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                        w13_scale_inv: torch.Tensor, w2_scale_inv: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor, block_n: int,
                        block_k: int) -> torch.Tensor:
    return x.new_empty((x.shape[0], w2.shape[1]))


@torch.library.custom_op("tessera::w8a8_block_fp8_matmul", mutates_args=())
def w8a8_block_fp8_matmul(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                          b_scales: torch.Tensor, block_n: int, block_k: int,
                          out_dtype: torch.dtype) -> torch.Tensor:
    """Block-scaled FP8 GEMM (formats: tessera.ops.fp8_gemm); FP8 tensor-core dots where the
    platform has them, float32 dots of the exactly upcast tiles elsewhere."""
    from tessera.ops.triton.fp8_gemm import w8a8_block_fp8_matmul as kernel
    from tessera.platforms import platform_of

    fp8_dot = platform_of(a.device).has_fp8_mma(a.device)
    return kernel(a, a_scales, b, b_scales, block_n, block_k, out_dtype, fp8_dot=fp8_dot)


@w8a8_block_fp8_matmul.register_fake
def _w8a8_block_fp8_matmul_fake(a: torch.Tensor, a_scales: torch.Tensor, b: torch.Tensor,
                                b_scales: torch.Tensor, block_n: int, block_k: int,
                                out_dtype: torch.dtype) -> torch.Tensor:
    return a.new_empty((*a.shape[:-1], b.shape[0]), dtype=out_dtype)


__all__ = ["embedding", "fused_add_rms_norm", "fused_moe", "fused_moe_fp8", "fused_moe_fp8_torch",
           "fused_moe_torch", "gemv", "gemv_rms_norm", "gemv_silu_mul",
           "per_token_group_quant_fp8", "qk_norm_rope", "rms_norm", "rotary_embedding",
           "silu_and_mul", "w8a8_block_fp8_matmul"]
