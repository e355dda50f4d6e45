"""Qwen3-MoE: Qwen3 (q/k norm attention) with a FusedMoE block as the MLP of its sparse layers.

Layer i is sparse when (i + 1) % decoder_sparse_step == 0 and i is not in mlp_only_layers;
the others keep a dense GatedMLP of `intermediate_size`, which `--moe-dense-tp-size 1` replicates
on every rank (tessera.layers.communicator). Checkpoint experts
`mlp.experts.<e>.{gate,up,down}_proj.weight` load into the block's stacked `w13_weight` /
`w2_weight`; the router is `mlp.gate.weight`.
"""
from __future__ import annotations

from typing import ClassVar

from torch import nn

from tessera.layers.moe import FusedMoE
from tessera.models.llama import Qwen3ForCausalLM


class Qwen3MoeForCausalLM(Qwen3ForCausalLM):
    expert_params_mapping: ClassVar[dict[str, tuple[str, int | None]]] = {
        "gate_proj": ("w13_weight", 0), "up_proj": ("w13_weight", 1),
        "down_proj": ("w2_weight", None)}

    def make_mlp(self, layer_id: int) -> nn.Module:
        moe = self.config.moe
        if moe is None:
            raise ValueError("a Qwen3-MoE config needs num_experts and num_experts_per_tok")
        if not moe.is_moe_layer(layer_id):
            return super().make_mlp(layer_id)
        return FusedMoE.from_config(moe, self.config.hidden_size, self.dtype)
