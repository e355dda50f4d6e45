"""Mixtral: Mistral's attention with a FusedMoE block (softmax top-k, renormalised) as every
layer's MLP.

Checkpoint names: the block is `block_sparse_moe` (ours: `mlp`), its router `.gate.weight`,
expert e's `experts.<e>.w1` (gate), `w3` (up) and `w2` (down).
"""
from __future__ import annotations

from typing import ClassVar

from torch import nn

from tessera.layers.moe import FusedMoE
from tessera.models.llama import MistralForCausalLM


class MixtralForCausalLM(MistralForCausalLM):
    checkpoint_renames: ClassVar[dict[str, str]] = {".block_sparse_moe.": ".mlp."}
    expert_params_mapping: ClassVar[dict[str, tuple[str, int | None]]] = {
        "w1": ("w13_weight", 0), "w3": ("w13_weight", 1), "w2": ("w2_weight", None)}

    def make_mlp(self, layer_id: int) -> nn.Module:
        if self.config.moe is None:
            raise ValueError("a Mixtral config needs num_local_experts and num_experts_per_tok")
        return FusedMoE.from_config(self.config.moe, self.config.hidden_size, self.dtype)
