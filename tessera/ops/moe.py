"""Mixture-of-experts expert computation: the torch reference and the token-to-expert alignment
the Triton kernel (tessera.ops.triton.fused_moe) works on.

Both compute, for hidden states x [T, H], stacked expert weights w13 [E, 2I, H] (gate rows
first, then up rows) and w2 [E, H, I], and a routing of each token to `top_k` experts
(topk_ids [T, K], topk_weights [T, K]):

    out[t] = sum_k topk_weights[t, k] * w2[e] @ (silu(w13[e, :I] @ x[t]) * w13[e, I:] @ x[t]),
    e = topk_ids[t, k]

Under tensor parallelism each rank holds I/tp of every expert and the result is this rank's
partial sum (the layer all-reduces it).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from tessera.ops.fp8_reference import dequantize_block_fp8, fp8_round_trip


def fused_moe_torch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                    topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                    act_round: Callable[[torch.Tensor], torch.Tensor] | None = None
                    ) -> torch.Tensor:
    """The reference: one loop over the experts that got tokens, each a gathered dense MLP.
    Accumulates in float32 and returns x's dtype. `act_round` (if given) is applied to the
    SiLU·mul output before the down projection (the FP8 path's activation quantization)."""
    num_tokens, top_k = topk_ids.shape
    inter = w13.shape[1] // 2
    out = torch.zeros((num_tokens, w2.shape[1]), dtype=torch.float32, device=x.device)
    if num_tokens == 0:
        return out.to(x.dtype)
    flat_ids = topk_ids.reshape(-1)
    order = torch.argsort(flat_ids, stable=True)
    counts = torch.bincount(flat_ids, minlength=w13.shape[0]).tolist()
    start = 0
    for expert, count in enumerate(counts):
        if count == 0:
            continue
        pairs = order[start:start + count]  # flat (token, k) indices routed to this expert
        start += count
        tokens = pairs // top_k
        gate_up = F.linear(x[tokens], w13[expert])
        act = F.silu(gate_up[:, :inter]) * gate_up[:, inter:]
        if act_round is not None:
            act = act_round(act)
        down = F.linear(act, w2[expert]).float()
        out.index_add_(0, tokens, down * topk_weights.reshape(-1)[pairs].float()[:, None])
    return out.to(x.dtype)


def fused_moe_fp8_torch(x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                        w13_scale_inv: torch.Tensor, w2_scale_inv: torch.Tensor,
                        topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        block: tuple[int, int]) -> torch.Tensor:
    """The block-FP8 experts' reference: w13 [E, 2I, H] / w2 [E, H, I] float8_e4m3fn with
    block scales [E, 2I/bn, H/bk] / [E, H/bn, I/bk] (dequantized = fp8 * scale_inv per block),
    activations (x, and the SiLU·mul output) rounded through per-token-group FP8 with groups of
    bk, as the Triton kernel (tessera.ops.triton.fused_moe_fp8) computes. float32 math."""
    group = block[1]
    w13_f = dequantize_block_fp8(w13, w13_scale_inv, block)
    w2_f = dequantize_block_fp8(w2, w2_scale_inv, block)
    out = fused_moe_torch(fp8_round_trip(x, group), w13_f, w2_f, topk_weights, topk_ids,
                          act_round=lambda a: fp8_round_trip(a, group))
    return out.to(x.dtype)


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_m: int
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sorts the T*K (token, k) pairs by expert into blocks of `block_m` rows, each block one
    expert's, so a grouped GEMM can run one weight matrix per block.

    Returns
    * sorted_ids [T*K + E*(block_m-1)]: flat pair indices (t*K + k), each expert's run padded
      to a multiple of block_m with T*K (an index no pair has: the kernels mask it);
    * expert_ids [len(sorted_ids) / block_m]: the expert of each block (0 for unused blocks);
    * num_padded [1]: how many entries of sorted_ids are in use (the kernels skip the rest).

    The sizes depend only on T, K and E, and nothing is read back to the host, so the whole
    computation can be captured into a CUDA graph.
    """
    flat = topk_ids.reshape(-1).to(torch.int64)
    num_pairs = flat.numel()
    device = flat.device
    max_blocks = (num_pairs + num_experts * (block_m - 1) + block_m - 1) // block_m
    # scatter_add rather than bincount: bincount reads its output size back to the host
    counts = torch.zeros(num_experts, dtype=torch.int64, device=device)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    padded_end = torch.cumsum(padded, 0)
    padded_start = padded_end - padded
    count_start = torch.cumsum(counts, 0) - counts
    order = torch.argsort(flat, stable=True)
    experts_sorted = flat[order]
    rank = torch.arange(num_pairs, device=device) - count_start[experts_sorted]
    sorted_ids = torch.full((max_blocks * block_m,), num_pairs, dtype=torch.int32, device=device)
    sorted_ids[padded_start[experts_sorted] + rank] = order.to(torch.int32)
    block_starts = torch.arange(max_blocks, device=device) * block_m
    expert_ids = torch.searchsorted(padded_end, block_starts, right=True)
    expert_ids = expert_ids.clamp_(max=num_experts - 1).to(torch.int32)
    num_padded = padded_end[-1:].to(torch.int32)
    return sorted_ids, expert_ids, num_padded


__all__ = ["fused_moe_fp8_torch", "fused_moe_torch", "moe_align_block_size"]
