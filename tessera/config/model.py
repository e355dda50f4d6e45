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
    correction_bias: bool = False  # DeepSeek-V3's e_score_correction_bias on the router

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
        if model_type in ("deepseek_v2", "deepseek_v3"):
            return cls._from_deepseek(d, int(experts))
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

    @classmethod
    def _from_deepseek(cls, d: dict[str, Any], experts: int) -> MoEConfig:
        """DeepSeek-V2/V3 names: layer i is sparse when i >= first_k_dense_replace and
        i % moe_layer_freq == 0 (the others are dense: mlp_only_layers); n_shared_experts
        shared experts of moe_intermediate_size each run as one MLP; `topk_method` picks the
        routing: greedy (softmax top-k), group_limited_greedy (softmax, best groups by their
        best expert) or noaux_tc (sigmoid, e_score_correction_bias, best groups by the sum of
        their two best biased scores). V3 configs written by transformers carry no
        topk_method / scoring_func: noaux_tc with sigmoid is what the V3 model does."""
        v3 = d.get("model_type") == "deepseek_v3"
        method = d.get("topk_method") or ("noaux_tc" if v3 else "greedy")
        if method not in ("greedy", "group_limited_greedy", "noaux_tc"):
            raise ValueError(f"unsupported DeepSeek topk_method {method!r}; tessera supports "
                             f"greedy, group_limited_greedy and noaux_tc")
        grouped = method != "greedy"
        first_dense = int(d.get("first_k_dense_replace") or 0)
        freq = int(d.get("moe_layer_freq") or 1)
        layers = int(d.get("num_hidden_layers") or 0)
        dense = tuple(i for i in range(layers) if i < first_dense or i % freq)
        intermediate = int(d["moe_intermediate_size"])
        scoring = d.get("scoring_func") or ("sigmoid" if method == "noaux_tc" else "softmax")
        return cls(
            num_experts=experts,
            top_k=int(d["num_experts_per_tok"]),
            intermediate_size=intermediate,
            norm_topk_prob=bool(d.get("norm_topk_prob", v3)),
            mlp_only_layers=dense,
            shared_expert_intermediate_size=int(d.get("n_shared_experts") or 0) * intermediate,
            scoring_func=scoring,
            n_group=int(d.get("n_group") or 1) if grouped else 1,
            topk_group=int(d.get("topk_group") or 1) if grouped else 1,
            routed_scaling_factor=float(d.get("routed_scaling_factor") or 1.0),
            correction_bias=method == "noaux_tc",
        )


@dataclasses.dataclass(frozen=True)
class MLAConfig:
    """Multi-head latent attention (DeepSeek-V2/V3): queries through q_proj, or the low-rank
    q_a_proj -> q_a_layernorm -> q_b_proj when q_lora_rank is set; keys and values from one
    kv_lora_rank latent per token plus a shared qk_rope_head_dim rotary key."""

    q_lora_rank: int | None
    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    rope_interleave: bool = True  # the rotary pairs are (x0, x1), (x2, x3), ... (GPT-J style)

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> MLAConfig | None:
        """None for a model without a latent KV (no kv_lora_rank)."""
        if not d.get("kv_lora_rank"):
            return None
        q_lora = d.get("q_lora_rank")
        return cls(q_lora_rank=int(q_lora) if q_lora else None,
                   kv_lora_rank=int(d["kv_lora_rank"]),
                   qk_nope_head_dim=int(d["qk_nope_head_dim"]),
                   qk_rope_head_dim=int(d["qk_rope_head_dim"]),
                   v_head_dim=int(d["v_head_dim"]),
                   rope_interleave=bool(d.get("rope_interleave", True)))


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
    mla: MLAConfig | None = None  # None: K/V per head (MHA / GQA)

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
            mla=MLAConfig.from_hf_dict(d),
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
