"""The expert-weight formats of FusedMoE that need no quantization scheme: the plain stacked
weights and the op that computes the routed experts from them, plus `add_expert_param`, which
every MoEMethod uses to register a stacked parameter the block's weight loader can fill."""
from __future__ import annotations

import torch
from torch import nn

from tessera.layers.custom_op import MultiPlatformOp
from tessera.layers.quantization.base import MoEMethod, set_weight_loader
from tessera.ops import custom_ops  # noqa: F401  (registers tessera::fused_moe*)


class MoEExperts(MultiPlatformOp):
    """The routed experts' output [T, H] for hidden states, stacked weights and a routing."""

    def __init__(self, *, force_native: bool = False) -> None:
        super().__init__(force_native)

    def forward_native(self, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                       topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.tessera.fused_moe_torch(x, w13, w2, topk_weights, topk_ids)

    def forward_cuda(self, x: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor,
                     topk_weights: torch.Tensor, topk_ids: torch.Tensor) -> torch.Tensor:
        return torch.ops.tessera.fused_moe(x, w13, w2, topk_weights, topk_ids)


def add_expert_param(layer: nn.Module, name: str, shape: tuple[int, ...], dtype: torch.dtype,
                     weight_loader, block: tuple[int, int] | None = None) -> nn.Parameter:
    """Registers a stacked expert parameter `name` ("w13_..." or "w2_..."); `block` marks a
    block-scale tensor (elements of its weight per scale entry along each weight dim)."""
    param = nn.Parameter(torch.empty(shape, dtype=dtype), requires_grad=False)
    param.expert_part = name.split("_")[0]
    if block is not None:
        param.block_shape = block
    layer.register_parameter(name, set_weight_loader(param, weight_loader))
    return param


class UnquantizedMoEMethod(MoEMethod):
    """Expert weights in the model's dtype, computed by MoEExperts."""

    def __init__(self, *, force_native: bool = False) -> None:
        self.force_native = force_native

    def create_weights(self, layer, num_experts, intermediate, hidden, dtype,
                       weight_loader) -> None:
        add_expert_param(layer, "w13_weight", (num_experts, 2 * intermediate, hidden), dtype,
                         weight_loader)
        add_expert_param(layer, "w2_weight", (num_experts, hidden, intermediate), dtype,
                         weight_loader)
        layer.expert_op = MoEExperts(force_native=self.force_native)

    def apply(self, layer, x, topk_weights, topk_ids) -> torch.Tensor:
        return layer.expert_op(x, layer.w13_weight, layer.w2_weight, topk_weights, topk_ids)


__all__ = ["MoEExperts", "UnquantizedMoEMethod", "add_expert_param"]
