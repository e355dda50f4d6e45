"""MoE fields of HF configs (ModelConfig.moe) and the MoE presets."""
from __future__ import annotations

import torch

from tessera.config.model import ModelConfig
from tessera.layers.moe import FusedMoE
from tessera.models.loader import load_model, load_model_config
from tessera.models.presets import PRESETS


def test_qwen3_30b_a3b_preset_has_the_real_moe_shape():
    cfg = ModelConfig.from_hf_dict(PRESETS["qwen3-30b-a3b"])
    moe = cfg.moe
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.vocab_size) == (
        48, 2048, 128, 151936)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (32, 4)
    assert (moe.num_experts, moe.top_k, moe.intermediate_size, moe.norm_topk_prob) == (
        128, 8, 768, True)
    assert all(moe.is_moe_layer(i) for i in range(48))


def test_moe_field_names_and_defaults():
    base = {"architectures": ["X"], "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 4, "num_attention_heads": 2, "num_experts_per_tok": 2}
    mixtral = ModelConfig.from_hf_dict({**base, "model_type": "mixtral",
                                        "num_local_experts": 8}).moe
    # Mixtral: experts as wide as the dense MLP, top-k always renormalised
    assert (mixtral.num_experts, mixtral.intermediate_size, mixtral.norm_topk_prob) == (8, 16,
                                                                                      True)
    qwen = ModelConfig.from_hf_dict({**base, "model_type": "qwen3_moe", "num_experts": 4,
                                     "moe_intermediate_size": 4, "decoder_sparse_step": 2,
                                     "mlp_only_layers": [3]}).moe
    assert not qwen.norm_topk_prob
    assert [qwen.is_moe_layer(i) for i in range(4)] == [False, True, False, False]
    assert ModelConfig.from_hf_dict({**base, "model_type": "llama"}).moe is None


def test_tiny_qwen3_moe_preset_runs_with_dummy_weights():
    cfg = load_model_config("tiny-qwen3-moe")
    model = load_model("tiny-qwen3-moe", cfg, "auto", torch.float32, "cpu")
    kinds = [type(layer.mlp) is FusedMoE for layer in model.model.layers]
    assert kinds == [True, False, True]
    # the forward needs the attention context of a runner; the MoE block alone runs here
    block = model.model.layers[0].mlp
    out = block(torch.randn(5, cfg.hidden_size))
    assert out.shape == (5, cfg.hidden_size) and torch.isfinite(out).all()
