"""FusedMoE: a mixture-of-experts MLP block (router, routed experts, optional shared experts).

* Router: `gate` (a replicated [E, H] projection; DeepSeek-V3's `e_score_correction_bias`
  lives on it) and `select_experts` (tessera.layers.moe_router: softmax top-k with or without
  renormalisation, sigmoid / grouped top-k with a correction bias, routed scaling).
* Routed experts: stacked weights `w13_weight [E, 2I/tp, H]` (gate rows, then up rows) and
  `w2_weight [E, H, I/tp]`, filled from per-expert checkpoint tensors by `weight_loader(param,
  tensor, shard_id, expert_id)` (shard 0 = gate_proj / w1, 1 = up_proj / w3; w2 takes
  down_proj / w2). Their format and the computation are the block's MoEMethod
  (`quant_method`, from the current QuantConfig like a linear layer's): unquantized, the
  weights in the model dtype and `MoEExperts`, bound once per platform: the Triton fused MoE
  (`tessera::fused_moe`) on CUDA/MUSA, the per-expert torch reference
  (`tessera::fused_moe_torch`) elsewhere, each one opaque node under torch.compile; block FP8
  adds `*_weight_scale_inv` block scales (tessera.layers.quantization.fp8).
* Shared experts (Qwen2-MoE, DeepSeek): a GatedMLP every token goes through, optionally scaled
  by sigmoid(`shared_expert_gate`(x)) (Qwen2-MoE).

Tensor parallelism splits the expert intermediate dim: each rank keeps I/tp rows of every
expert (and of the shared experts), computes its partial sum of the block's output, and one
all-reduce adds the ranks' partials. Expert parallelism (each rank holding whole experts) is
not implemented.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.model import MoEConfig
from tessera.distributed import get_tp_rank, get_tp_size, tensor_parallel_all_reduce
from tessera.layers.linear import ReplicatedLinear, load_shard
from tessera.layers.mlp import GatedMLP
from tessera.layers.moe_router import MoERouting, select_experts
from tessera.layers.quantization.base import current_quant_config
from tessera.layers.quantization.moe_methods import MoEExperts, UnquantizedMoEMethod


class MoEGate(nn.Module):
    """The router projection [E, H] (replicated, unquantized) and, for DeepSeek-V3-style
    routing, the per-expert correction bias added to the scores when choosing experts."""

    def __init__(self, hidden_size: int, num_experts: int, dtype: torch.dtype,
                 correction_bias: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size, dtype=dtype),
                                   requires_grad=False)
        self.e_score_correction_bias = (
            nn.Parameter(torch.zeros(num_experts, dtype=torch.float32), requires_grad=False)
            if correction_bias else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class FusedMoE(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, num_experts: int,
                 routing: MoERouting, dtype: torch.dtype, shared_intermediate_size: int = 0,
                 shared_expert_gate: bool = False, correction_bias: bool = False,
                 force_native: bool = False) -> None:
        super().__init__()
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        if intermediate_size % self.tp_size:
            raise ValueError(f"MoE intermediate size {intermediate_size} does not divide by tp "
                             f"size {self.tp_size}")
        if routing.top_k > num_experts:
            raise ValueError(f"top_k {routing.top_k} exceeds the {num_experts} experts")
        self.num_experts, self.routing = num_experts, routing
        self.hidden_size = hidden_size
        self.local_intermediate = intermediate_size // self.tp_size
        self.gate = MoEGate(hidden_size, num_experts, dtype, correction_bias)
        config = current_quant_config()
        self.quant_method = (config.moe_method() if config is not None
                             else UnquantizedMoEMethod(force_native=force_native))
        self.quant_method.create_weights(self, num_experts, self.local_intermediate,
                                         hidden_size, dtype, self.weight_loader)
        self.shared_expert = (GatedMLP(hidden_size, shared_intermediate_size, dtype,
                                       reduce_results=False)
                              if shared_intermediate_size else None)
        self.shared_expert_gate = (ReplicatedLinear(hidden_size, 1, False, dtype)
                                   if shared_expert_gate else None)
        assert self.shared_expert is not None or self.shared_expert_gate is None

    @classmethod
    def from_config(cls, moe: MoEConfig, hidden_size: int, dtype: torch.dtype,
                    shared_expert_gate: bool = False) -> FusedMoE:
        routing = MoERouting(top_k=moe.top_k, renormalize=moe.norm_topk_prob,
                             scoring_func=moe.scoring_func, n_group=moe.n_group,
                             topk_group=moe.topk_group,
                             routed_scaling_factor=moe.routed_scaling_factor)
        return cls(hidden_size, moe.intermediate_size, moe.num_experts, routing, dtype,
                   shared_intermediate_size=moe.shared_expert_intermediate_size,
                   shared_expert_gate=shared_expert_gate, correction_bias=moe.correction_bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor,
                      shard_id: int | None = None, expert_id: int | None = None) -> None:
        """One expert's checkpoint tensor into the stack: gate_proj/w1 (shard 0) or
        up_proj/w3 (shard 1) [I, H] into w13, down_proj/w2 [H, I] into w2; this rank's I/tp.
        Without an expert id, `loaded` is the whole TP=1 stack ([E, 2I, H] or [E, H, I]: how
        dummy weights reach a rank, tessera.models.loader.init_dummy_weights)."""
        if expert_id is None:
            assert shard_id is None, "a whole stack has no shard id"
            for e in range(self.num_experts):
                if param.expert_part == "w13":
                    for shard, half in enumerate(loaded[e].chunk(2, dim=0)):
                        self.weight_loader(param, half, shard, e)
                else:
                    self.weight_loader(param, loaded[e], None, e)
            return
        if not 0 <= expert_id < self.num_experts:
            raise ValueError(f"expert {expert_id} out of range: the layer has "
                             f"{self.num_experts} experts")
        size, start = self.local_intermediate, self.tp_rank * self.local_intermediate
        # a format's block scales (w13_weight_scale_inv, ...) shard like their weight, in
        # whole blocks (param.block_shape: elements per scale entry)
        block = getattr(param, "block_shape", None)
        if param.expert_part == "w2":  # [E, H, I] (or its scales): I is dim 1
            assert shard_id is None, f"w2 takes no shard id, got {shard_id}"
            load_shard(param.data[expert_id], loaded, 1, 0, size, start, block)
        else:
            assert shard_id in (0, 1), f"w13 shard id must be 0 (gate) or 1 (up), not {shard_id}"
            load_shard(param.data[expert_id], loaded, 0, shard_id * size, size, start, block)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_weights [T, K] float32, topk_ids [T, K]) of hidden states x [T, H]."""
        return select_experts(self.gate(x), self.routing, self.gate.e_score_correction_bias)

    def partial(self, x: torch.Tensor) -> torch.Tensor:
        """This rank's part of the block's output (the whole output at TP size 1)."""
        topk_weights, topk_ids = self.route(x)
        out = self.quant_method.apply(self, x, topk_weights, topk_ids)
        if self.shared_expert is not None:
            shared = self.shared_expert(x)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x)) * shared
            out = out + shared
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return tensor_parallel_all_reduce(self.partial(x))

    def forward_norm(self, x: torch.Tensor, residual: torch.Tensor | None,
                     norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(norm(x + residual)), x + residual); without a residual (self(norm(x)), x).
        The same contract as GatedMLP.forward_norm, so a decoder layer takes either."""
        if residual is None:
            return self(norm(x)), x
        normed, residual = norm(x, residual)
        return self(normed), residual


__all__ = ["FusedMoE", "MoEExperts", "MoEGate", "UnquantizedMoEMethod"]
