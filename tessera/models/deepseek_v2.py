"""DeepSeek-V2 / V3: multi-head latent attention (MLA) and a mixture of experts with shared ones.

The decoder layers are Llama's (tessera.models.llama) with two blocks swapped: the attention is
`DeepseekV2MLA` and the MLP of layer i is a FusedMoE with shared experts when the config says
so (i >= first_k_dense_replace, i % moe_layer_freq == 0: ModelConfig.moe), a dense GatedMLP
otherwise. V3 is the same code: its routing (sigmoid scores, e_score_correction_bias,
noaux_tc grouped top-k) comes from its config through MoEConfig.

MLA, in the absorbed form the KV cache wants. Per token: c_kv, k_pe = kv_a_proj_with_mqa(x)
(kv_lora_rank L and qk_rope_head_dim R dims); the cache holds [kv_a_layernorm(c_kv) |
rope(k_pe)], one L + R latent per token and layer (MLASpec). The checkpoint's kv_b_proj maps
the normed latent to every head's k_nope and v: W_UK [H, nope, L] and W_UV [H, v, L]. Since
q_nope . (W_UK c) = (q_nope W_UK) . c, each head's query moves into the latent space instead
(q = [q_nope W_UK | rope(q_pe)], [T, H, L + R]), attends over the latents as MQA with one
shared K/V head (the value is the latent's first L dims), and its output [T, H, L] goes back
through W_UV to [T, H, v] before o_proj. Softmax scale: (nope + R)^-0.5 (times YaRN's
mscale^2 when rope_scaling has mscale_all_dim).

Tensor parallelism: heads split over the ranks (q_proj / q_b_proj and kv_b_proj column-parallel
by whole heads, o_proj row-parallel); q_a_proj and kv_a_proj_with_mqa are replicated, so every
rank caches the same latent. The routed and shared experts split their intermediate dim.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from tessera.attention import op as _op  # noqa: F401  (registers tessera::attention)
from tessera.cache.spec import MLASpec
from tessera.config.model import MLAConfig, ModelConfig
from tessera.layers.layernorm import RMSNorm
from tessera.layers.linear import ColumnParallelLinear, ReplicatedLinear, RowParallelLinear
from tessera.layers.moe import FusedMoE
from tessera.layers.rotary import get_rope, mla_softmax_scale
from tessera.models.llama import LlamaForCausalLM

_LAYER_INDEX = re.compile(r"^model\.layers\.(\d+)\.")


class DeepseekV2MLA(nn.Module):
    """Multi-head latent attention of one layer (see the module docstring for the math)."""

    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        mla = config.mla
        assert mla is not None
        self.layer_id = layer_id
        self.nope_dim, self.rope_dim = mla.qk_nope_head_dim, mla.qk_rope_head_dim
        self.kv_lora_rank, self.v_head_dim = mla.kv_lora_rank, mla.v_head_dim
        heads, hidden = config.num_attention_heads, config.hidden_size
        bias = config.attention_bias
        # the low-rank norms are at the reference implementation's default eps, not the
        # model's rms_norm_eps (transformers does the same)
        if mla.q_lora_rank is None:
            self.q_proj = ColumnParallelLinear(hidden, heads * mla.qk_head_dim, dtype=dtype)
        else:
            self.q_a_proj = ReplicatedLinear(hidden, mla.q_lora_rank, bias, dtype)
            self.q_a_layernorm = RMSNorm(mla.q_lora_rank, 1e-6)
            self.q_b_proj = ColumnParallelLinear(mla.q_lora_rank, heads * mla.qk_head_dim,
                                                 dtype=dtype)
        self.q_lora = mla.q_lora_rank is not None
        self.kv_a_proj_with_mqa = ReplicatedLinear(hidden, mla.kv_lora_rank + mla.qk_rope_head_dim,
                                                   bias, dtype)
        self.kv_a_layernorm = RMSNorm(mla.kv_lora_rank, 1e-6)
        self.kv_b_proj = ColumnParallelLinear(
            mla.kv_lora_rank, heads * (mla.qk_nope_head_dim + mla.v_head_dim), dtype=dtype)
        self.num_heads = self.kv_b_proj.out_features // (self.nope_dim + self.v_head_dim)
        self.o_proj = RowParallelLinear(heads * mla.v_head_dim, hidden, bias=bias, dtype=dtype)
        self.rotary_emb = get_rope(mla.qk_rope_head_dim, config.max_position_embeddings,
                                   config.rope_theta, config.rope_scaling,
                                   is_neox_style=not mla.rope_interleave)
        self.scaling = mla_softmax_scale(mla.qk_head_dim, config.rope_scaling,
                                         config.max_position_embeddings)
        # kv_b_proj split per head (absorb_kv_b_proj, once its weight is final): q_nope ->
        # latent [H, nope, L] and latent -> v [H, L, v]; derived, so not checkpoint parameters
        self.register_buffer("w_uk", torch.empty(self.num_heads, self.nope_dim,
                                                 self.kv_lora_rank, dtype=dtype),
                             persistent=False)
        self.register_buffer("w_uv", torch.empty(self.num_heads, self.kv_lora_rank,
                                                 self.v_head_dim, dtype=dtype),
                             persistent=False)

    @torch.no_grad()
    def absorb_kv_b_proj(self) -> None:
        """Fill w_uk / w_uv from kv_b_proj's weight (this rank's heads), decoded by its
        QuantMethod (a block-FP8 kv_b_proj is dequantized: fp8 * weight_scale_inv)."""
        weight = self.kv_b_proj.quant_method.dense_weight(self.kv_b_proj, self.w_uk.dtype)
        per_head = weight.view(self.num_heads, self.nope_dim + self.v_head_dim,
                               self.kv_lora_rank)
        self.w_uk.copy_(per_head[:, :self.nope_dim])
        self.w_uv.copy_(per_head[:, self.nope_dim:].transpose(1, 2))

    def forward_norm(self, positions: torch.Tensor, hidden: torch.Tensor,
                     residual: torch.Tensor | None,
                     norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(norm(hidden + residual)), hidden + residual), the decoder layer's contract."""
        if residual is None:
            return self(positions, norm(hidden)), hidden
        normed, residual = norm(hidden, residual)
        return self(positions, normed), residual

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        t = hidden.shape[0]
        if self.q_lora:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden)))
        else:
            q = self.q_proj(hidden)
        q_nope, q_pe = q.view(t, self.num_heads, -1).split([self.nope_dim, self.rope_dim], -1)
        c_kv, k_pe = self.kv_a_proj_with_mqa(hidden).split([self.kv_lora_rank, self.rope_dim],
                                                           -1)
        q_pe, k_pe = self.rotary_emb(positions, q_pe, k_pe.unsqueeze(1))
        # every head's q_nope into the latent space: [H, T, nope] @ [H, nope, L]
        q_latent = torch.bmm(q_nope.transpose(0, 1), self.w_uk).transpose(0, 1)
        query = torch.cat([q_latent, q_pe], dim=-1)  # [T, H, L + R]
        key = torch.cat([self.kv_a_layernorm(c_kv.contiguous()), k_pe[:, 0]], dim=-1)
        key = key.unsqueeze(1)  # [T, 1, L + R]: the latent the cache stores
        out = torch.empty((t, self.num_heads, self.kv_lora_rank), dtype=query.dtype,
                          device=query.device)
        torch.ops.tessera.attention(query, key, key[..., :self.kv_lora_rank], out,
                                    self.layer_id, self.scaling)
        # back out of the latent: [H, T, L] @ [H, L, v]
        heads_out = torch.bmm(out.transpose(0, 1), self.w_uv).transpose(0, 1)
        return self.o_proj(heads_out.reshape(t, self.num_heads * self.v_head_dim))


class DeepseekV2ForCausalLM(LlamaForCausalLM):
    packed_modules_mapping: ClassVar[dict[str, tuple[str, str | int]]] = {
        "gate_proj": ("gate_up_proj", 0), "up_proj": ("gate_up_proj", 1)}
    checkpoint_renames: ClassVar[dict[str, str]] = {".mlp.shared_experts.": ".mlp.shared_expert."}
    expert_params_mapping: ClassVar[dict[str, tuple[str, int | None]]] = {
        "gate_proj": ("w13_weight", 0), "up_proj": ("w13_weight", 1),
        "down_proj": ("w2_weight", None)}

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        if config.mla is None:
            raise ValueError(f"a {config.architecture} config needs the MLA fields "
                             f"(kv_lora_rank, qk_nope_head_dim, qk_rope_head_dim, v_head_dim)")
        super().__init__(config, dtype)

    def make_attention(self, layer_id: int) -> nn.Module:
        return DeepseekV2MLA(self.config, layer_id, self.dtype)

    def make_mlp(self, layer_id: int) -> nn.Module:
        moe = self.config.moe
        if moe is None or not moe.is_moe_layer(layer_id):
            return super().make_mlp(layer_id)
        return FusedMoE.from_config(moe, self.config.hidden_size, self.dtype)

    def kv_cache_spec(self) -> MLASpec:
        mla: MLAConfig = self.config.mla
        return MLASpec(self.config.num_hidden_layers, mla.kv_lora_rank, mla.qk_rope_head_dim,
                       self.dtype)

    def num_attention_heads(self) -> int:
        return self.model.layers[0].self_attn.num_heads

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """As CausalLM's, without the layers past num_hidden_layers: V3 checkpoints append
        their multi-token-prediction module as one more layer, which this model does not run."""
        layers = self.config.num_hidden_layers

        def in_model(name: str) -> bool:
            match = _LAYER_INDEX.match(name)
            return match is None or int(match.group(1)) < layers

        return super().load_weights((n, t) for n, t in weights if in_model(n))

    def process_weights_after_loading(self) -> None:
        super().process_weights_after_loading()
        for layer in self.model.layers:
            layer.self_attn.absorb_kv_b_proj()


class DeepseekV3ForCausalLM(DeepseekV2ForCausalLM):
    """DeepSeek-V3: V2's code; the sigmoid / correction-bias routing is in its config."""


__all__ = ["DeepseekV2ForCausalLM", "DeepseekV2MLA", "DeepseekV3ForCausalLM"]
