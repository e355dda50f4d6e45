"""A model that is not in the package: the proof that tessera.models.base.CausalLM is enough.

TinyGated is a parallel-block transformer (GPT-J style: attention and a gated MLP both read the
same normed input and are added to the residual together), unlike the Llama family. This file
is all it takes: the model built from tessera.layers, plus `register_model` (the registry entry).
`TinyGatedReference` is its plain-PyTorch definition, the oracle the tests compare against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.cache.spec import MHASpec
from tessera.config.model import ModelConfig
from tessera.layers.attention import Attention
from tessera.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from tessera.layers.layernorm import RMSNorm
from tessera.layers.linear import QKVParallelLinear, RowParallelLinear
from tessera.layers.mlp import GatedMLP
from tessera.layers.rotary import get_rope
from tessera.models.base import CausalLM
from tessera.models.llama import LlamaForCausalLM
from tessera.models.registry import register_model

ARCHITECTURE = "TinyGatedForCausalLM"


class TinyGatedBlock(nn.Module):
    def __init__(self, config: ModelConfig, layer_id: int, dtype: torch.dtype) -> None:
        super().__init__()
        heads, kv_heads, head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                     config.head_dim)
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, head_dim, heads, kv_heads,
                                          dtype=dtype)
        self.o_proj = RowParallelLinear(heads * head_dim, config.hidden_size, dtype=dtype)
        self.rotary = get_rope(head_dim, config.max_position_embeddings, config.rope_theta)
        self.attn = Attention(self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads, head_dim,
                              head_dim ** -0.5, layer_id)
        self.mlp = GatedMLP(config.hidden_size, config.intermediate_size, dtype)
        self.sizes = [self.qkv_proj.num_heads * head_dim, self.qkv_proj.num_kv_heads * head_dim,
                      self.qkv_proj.num_kv_heads * head_dim]

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        t = h.shape[0]
        q, k, v = self.qkv_proj(h).split(self.sizes, dim=-1)
        q = q.reshape(t, self.attn.num_heads, -1)
        k = k.reshape(t, self.attn.num_kv_heads, -1)
        q, k = self.rotary(positions, q, k)
        return x + self.o_proj(self.attn(q, k, v.reshape(t, self.attn.num_kv_heads, -1))) + (
            self.mlp(h))


class TinyGatedForCausalLM(CausalLM):
    # the same merged q/k/v and gate/up projections as the Llama family's
    packed_modules_mapping = LlamaForCausalLM.packed_modules_mapping

    def __init__(self, config: ModelConfig, dtype: torch.dtype) -> None:
        super().__init__()
        self.config, self.dtype = config, dtype
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size, dtype)
        self.layers = nn.ModuleList(TinyGatedBlock(config, i, dtype)
                                    for i in range(config.num_hidden_layers))
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size, dtype)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.finish(self.trunk(input_ids, positions))

    def trunk(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # a parallel block's MLP reads the same input as its attention: after the last
        # attention only the final norm is left per token
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(positions, x)
        return x

    def finish(self, stream: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
        if rows is not None:
            stream = stream.index_select(0, rows)
        return self.final_norm(stream)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head.compute_logits(hidden)

    def kv_cache_spec(self) -> MHASpec:
        block = self.layers[0]
        return MHASpec(len(self.layers), block.attn.num_kv_heads, block.attn.head_dim, self.dtype)

    def num_attention_heads(self) -> int:
        return self.layers[0].attn.num_heads


register_model(ARCHITECTURE, TinyGatedForCausalLM)


class TinyGatedReference(nn.Module):
    """The same model in plain PyTorch, with checkpoint names (q_proj, gate_proj, ...)."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        h, inter, self.heads = cfg["hidden_size"], cfg["intermediate_size"], cfg[
            "num_attention_heads"]
        self.kv_heads, self.head_dim = cfg["num_key_value_heads"], cfg["head_dim"]
        self.eps, self.theta = cfg["rms_norm_eps"], cfg["rope_theta"]
        d = self.head_dim
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], h)
        self.layers = nn.ModuleList()
        for _ in range(cfg["num_hidden_layers"]):
            layer = nn.Module()
            layer.norm = nn.Module()
            layer.norm.weight = nn.Parameter(1 + 0.1 * torch.randn(h))
            for name, (i, o) in {"q_proj": (h, self.heads * d), "k_proj": (h, self.kv_heads * d),
                                 "v_proj": (h, self.kv_heads * d),
                                 "o_proj": (self.heads * d, h)}.items():
                setattr(layer, name, nn.Linear(i, o, bias=False))
            layer.mlp = nn.Module()
            for name, (i, o) in {"gate_proj": (h, inter), "up_proj": (h, inter),
                                 "down_proj": (inter, h)}.items():
                setattr(layer.mlp, name, nn.Linear(i, o, bias=False))
            self.layers.append(layer)
        self.final_norm = nn.Module()
        self.final_norm.weight = nn.Parameter(1 + 0.1 * torch.randn(h))
        self.lm_head = nn.Linear(h, cfg["vocab_size"], bias=False)

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))

    def _rope(self, x: torch.Tensor) -> torch.Tensor:  # x [H, T, D], positions 0..T-1
        d = self.head_dim
        inv = 1.0 / self.theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        angles = torch.outer(torch.arange(x.shape[1], dtype=torch.float32), inv)
        cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
        rotated = torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)
        return x * cos + rotated * sin

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids [T] -> logits [T, V] of one causal sequence."""
        x = self.embed_tokens(ids)
        t, d = ids.shape[0], self.head_dim
        for layer in self.layers:
            h = self._norm(x, layer.norm.weight)
            q = self._rope(layer.q_proj(h).view(t, self.heads, d).transpose(0, 1))
            k = self._rope(layer.k_proj(h).view(t, self.kv_heads, d).transpose(0, 1))
            v = layer.v_proj(h).view(t, self.kv_heads, d).transpose(0, 1)
            group = self.heads // self.kv_heads
            o = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 0),
                                               v.repeat_interleave(group, 0), is_causal=True)
            attn = layer.o_proj(o.transpose(0, 1).reshape(t, -1))
            mlp = layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(h)) * layer.mlp.up_proj(h))
            x = x + attn + mlp
        return self.lm_head(self._norm(x, self.final_norm.weight))
