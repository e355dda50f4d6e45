"""Helpers for the op tests: a Llama decoder layer (tessera.models.llama) runnable on its own, for
op and compile tests, and the relative error of a linear layer's output against float64.

Attention is a splitting op that reads a forward context; here a single causal sequence is served
by plain SDPA, so the layer runs without a KV pool or a ModelRunner.
"""
from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F

from tessera.attention.base import AttentionSupport
from tessera.config.model import ModelConfig
from tessera.forward.context import set_forward_context
from tessera.models.loader import default_dtype
from tessera.ops import native_ops


def llama_config(hidden: int = 64, heads: int = 4, kv_heads: int = 2, head_dim: int = 16,
                 intermediate: int = 96, max_pos: int = 256, **extra: Any) -> ModelConfig:
    return ModelConfig.from_hf_dict({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128,
        "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": 1,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": head_dim,
        "max_position_embeddings": max_pos, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        **extra,
    })


class CausalSdpaBackend:
    """One sequence, positions 0..T-1, no cache: enough to make the layer's math complete."""

    support = AttentionSupport()  # eager only, no fused rotary

    def forward(self, q, k, v, out, layer_id, scaling, forward_batch) -> None:
        group = q.shape[1] // k.shape[1]
        keys = k.repeat_interleave(group, dim=1).transpose(0, 1).float()
        values = v.repeat_interleave(group, dim=1).transpose(0, 1).float()
        o = F.scaled_dot_product_attention(q.transpose(0, 1).float(), keys, values,
                                           is_causal=True, scale=scaling)
        out.copy_(o.transpose(0, 1).to(out.dtype))


def attention_context() -> contextlib.AbstractContextManager:
    return set_forward_context(None, CausalSdpaBackend())  # type: ignore[arg-type]


def build_layer_pair(config: ModelConfig, dtype: torch.dtype, device: str | torch.device,
                     qk_norm: bool = False, seed: int = 0):
    """(fast-bound layer, native-bound layer) with identical random weights."""
    from tessera.models.llama import LlamaDecoderLayer

    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype):
        fast = LlamaDecoderLayer(config, 0, dtype, qk_norm)
        with native_ops():
            native = LlamaDecoderLayer(config, 0, dtype, qk_norm)
    with torch.no_grad():
        for name, param in fast.named_parameters():
            noise = torch.randn(param.shape, device=param.device)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)
    native.load_state_dict(fast.state_dict())
    return fast, native


def linear_rel_err(got: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b=None) -> float:
    """||got - (x @ w.T + b)|| / ||x @ w.T + b||, the reference in float64."""
    ref = x.double() @ w.double().T + (0 if b is None else b.double())
    return float((got.double() - ref).norm() / ref.norm())
