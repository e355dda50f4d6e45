"""ModelConfig: the architecture read from an HF config.json (or a built-in preset)."""
from __future__ import annotations

import dataclasses
from typing import Any

import torch


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """The mixture-of-experts fields of an HF config (Qwen2/3-MoE, Mixtral, DeepSeek names)."""

    num_experts: int  # num_experts / num_local_experts / n_routed_experts
    top_k: int  # num_experts_per_tok
    intermediate_size: int  # per expert: moe_intermediate_size (Mixtral: intermediate_size)
    norm_topk_prob: bool  # renormalise the top-k weights (Mixtral always does)
    decoder_sparse_step: int = 1  # layer i is MoE when (i + 1) % step == 0 ...
    mlp_only_layers: tuple[int, ...] = ()  # ... and it is not listed here (dense MLP instead)
    shared_expert_intermediate_size: int = 0  # 0: no shared experts
    scoring_func: str = "softmax"
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0

    def is_moe_layer(self, layer_id: int) -> bool:
        return (layer_id not in self.mlp_only_layers
                and (layer_id + 1) % self.decoder_sparse_step == 0)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MoEConfig | None:
        """None for a dense model (no expert count, or zero experts)."""
        experts = d.get("num_experts") or d.get("num_local_experts") or d.get("n_routed_experts")
        if not experts:
            return None
        if "num_experts_per_tok" not in d:
            raise ValueError("config.json has experts but no 'num_experts_per_tok'")
        model_type = d.get("model_type", "")
        return cls(
            num_experts=int(experts),
            top_k=int(d["num_experts_per_tok"]),
            intermediate_size=int(d.get("moe_intermediate_size") or d["intermediate_size"]),
            norm_topk_prob=bool(d.get("norm_topk_prob", model_type == "mixtral")),
            decoder_sparse_step=int(d.get("decoder_sparse_step") or 1),
            mlp_only_layers=tuple(int(i) for i in d.get("mlp_only_layers") or ()),
            shared_expert_intermediate_size=int(d.get("shared_expert_intermediate_size") or 0),
            scoring_func=d.get("scoring_func") or "softmax",
            n_group=int(d.get("n_group") or 1),
            topk_group=int(d.get("topk_group") or 1),
            routed_scaling_factor=float(d.get("routed_scaling_factor") or 1.0),
        )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    architecture: str
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    dtype: torch.dtype
    eos_token_ids: tuple[int, ...]
    bos_token_id: int | None
    hf_config: dict[str, Any] = dataclasses.field(repr=False, compare=False)
    moe: MoEConfig | None = None  # None: a dense model

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ModelConfig:
        archs = d.get("architectures") or []
        if not archs:
            raise ValueError("config.json has no 'architectures' entry; cannot pick a model class")
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads"]
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"config.json is missing required keys: {missing}")
        heads = int(d["num_attention_heads"])
        kv_heads = int(d.get("num_key_value_heads") or heads)
        head_dim = d.get("head_dim") or d["hidden_size"] // heads
        rope_theta, rope_scaling = parse_rope(d)
        model_type = d.get("model_type", "")
        # Qwen2 always has q/k/v bias; Llama-family configs say so with attention_bias.
        attention_bias = bool(d.get("attention_bias", model_type == "qwen2"))
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, list) else (() if eos is None else (int(eos),))
        return cls(
            architecture=archs[0],
            model_type=model_type,
            vocab_size=int(d["vocab_size"]),
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=int(d["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=int(head_dim),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=int(d.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            attention_bias=attention_bias,
            dtype=parse_dtype(d.get("torch_dtype") or d.get("dtype") or "bfloat16"),
            eos_token_ids=eos_ids,
            bos_token_id=d.get("bos_token_id"),
            hf_config=d,
            moe=MoEConfig.from_hf_dict(d),
        )


def parse_rope(d: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """Accept both `rope_theta` + `rope_scaling` (most checkpoints) and transformers 5's
    `rope_parameters` ({"rope_type", "rope_theta", ...scaling keys})."""
    params = d.get("rope_parameters")
    if isinstance(params, dict) and params:
        theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
        rope_type = params.get("rope_type", params.get("type", "default"))
        scaling = None if rope_type == "default" else {
            **{k: v for k, v in params.items() if k != "rope_theta"}, "rope_type": rope_type}
        return theta, scaling
    scaling = d.get("rope_scaling")
    if scaling is not None:
        scaling = dict(scaling)
        scaling.setdefault("rope_type", scaling.get("type", "default"))
        if scaling["rope_type"] == "default":
            scaling = None
    return float(d.get("rope_theta", 10000.0)), scaling


_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    if isinstance(name, torch.dtype):
        return name
    key = str(name).replace("torch.", "")
    if key not in _DTYPES:
        raise ValueError(f"unknown dtype {name!r}; choose one of {sorted(_DTYPES)}")
    return _DTYPES[key]
