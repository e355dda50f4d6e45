"""DeepSeek config fields (ModelConfig.mla, the DeepSeek names of MoEConfig), the DeepSeek
presets, and YaRN at DeepSeek-V2-Lite's real rope shape against transformers' own formula."""
from __future__ import annotations

import math

import pytest
import torch

from tessera.config.model import ModelConfig
from tessera.layers.rotary import RotaryEmbedding, compute_inv_freq, mla_softmax_scale
from tessera.models.deepseek_v2 import DeepseekV2ForCausalLM
from tessera.models.presets import PRESETS


def test_deepseek_v2_lite_preset_has_the_real_shape():
    cfg = ModelConfig.from_hf_dict(PRESETS["deepseek-v2-lite"])
    mla, moe = cfg.mla, cfg.moe
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads,
            cfg.intermediate_size, cfg.vocab_size) == (27, 2048, 16, 10944, 102400)
    assert (mla.q_lora_rank, mla.kv_lora_rank, mla.qk_nope_head_dim, mla.qk_rope_head_dim,
            mla.v_head_dim, mla.rope_interleave) == (None, 512, 128, 64, 128, True)
    assert (moe.num_experts, moe.top_k, moe.intermediate_size,
            moe.shared_expert_intermediate_size, moe.n_group, moe.scoring_func,
            moe.correction_bias) == (64, 6, 1408, 2 * 1408, 1, "softmax", False)
    assert [moe.is_moe_layer(i) for i in range(3)] == [False, True, True]
    assert cfg.rope_scaling["rope_type"] == "yarn" and cfg.rope_scaling["factor"] == 40
    with torch.device("meta"):  # shapes only: DeepSeek-V2-Lite's 15.7 B parameters
        model = DeepseekV2ForCausalLM(cfg, torch.bfloat16)
    assert round(sum(p.numel() for p in model.parameters()) / 1e9, 1) == 15.7
    assert model.kv_cache_spec().bytes_per_token() == 27 * (512 + 64) * 2
    fp8 = ModelConfig.from_hf_dict(PRESETS["deepseek-v2-lite-fp8"])
    assert fp8.mla == mla and fp8.moe == moe
    assert fp8.hf_config["quantization_config"] == {
        "quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic"}


def test_deepseek_routing_fields():
    base = {"architectures": ["DeepseekV3ForCausalLM"], "vocab_size": 10, "hidden_size": 8,
            "intermediate_size": 16, "num_hidden_layers": 6, "num_attention_heads": 2,
            "num_experts_per_tok": 2, "n_routed_experts": 8, "moe_intermediate_size": 4,
            "n_shared_experts": 1, "n_group": 4, "topk_group": 2, "first_k_dense_replace": 2,
            "kv_lora_rank": 4, "qk_nope_head_dim": 2, "qk_rope_head_dim": 2, "v_head_dim": 2}
    # transformers writes V3 configs without topk_method / scoring_func: V3's own routing
    v3 = ModelConfig.from_hf_dict({**base, "model_type": "deepseek_v3"}).moe
    assert (v3.scoring_func, v3.correction_bias, v3.n_group, v3.topk_group,
            v3.norm_topk_prob) == ("sigmoid", True, 4, 2, True)
    assert [v3.is_moe_layer(i) for i in range(6)] == [False, False, True, True, True, True]
    # V2 greedy ignores the group fields; every other layer sparse with moe_layer_freq 2
    v2 = ModelConfig.from_hf_dict({**base, "model_type": "deepseek_v2", "moe_layer_freq": 2,
                                   "topk_method": "greedy"}).moe
    assert (v2.scoring_func, v2.correction_bias, v2.n_group, v2.norm_topk_prob) == (
        "softmax", False, 1, False)
    assert [v2.is_moe_layer(i) for i in range(6)] == [False, False, True, False, True, False]
    with pytest.raises(ValueError, match="topk_method"):
        ModelConfig.from_hf_dict({**base, "model_type": "deepseek_v2", "topk_method": "x"})


def test_yarn_matches_transformers_at_deepseek_v2_lite_shape():
    from transformers import DeepseekV2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    scaling = {**PRESETS["deepseek-v2-lite"]["rope_scaling"], "rope_type": "yarn",
               "mscale": 1.0}  # a cos/sin factor != 1 (V2-Lite's own ratio is exactly 1)
    hf_config = DeepseekV2Config(qk_rope_head_dim=64, max_position_embeddings=163840,
                                 rope_parameters={**scaling, "rope_theta": 10000.0})
    hf_inv_freq, hf_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config, "cpu")
    torch.testing.assert_close(compute_inv_freq(64, 10000.0, scaling), hf_inv_freq)
    rope = RotaryEmbedding(64, 4096, 10000.0, scaling, is_neox_style=False, force_native=True)
    assert hf_factor != 1.0
    cos, sin = rope.cos_sin_cache[:, :32], rope.cos_sin_cache[:, 32:]
    torch.testing.assert_close(cos.square() + sin.square(),
                               torch.full_like(cos, hf_factor ** 2))
    mscale = 0.1 * 0.707 * math.log(40) + 1
    assert mla_softmax_scale(192, scaling) == pytest.approx(192 ** -0.5 * mscale ** 2)


def test_interleaved_rotary_rotates_neighbour_pairs():
    """(x0, x1), (x2, x3), ... each rotated by one angle, output laid out evens then odds."""
    rope = RotaryEmbedding(8, 64, 10000.0, is_neox_style=False, force_native=True)
    q, k = torch.randn(3, 2, 8), torch.randn(3, 1, 8)
    positions = torch.tensor([0, 5, 63])
    got_q, got_k = rope(positions, q, k)
    angles = positions[:, None].float() * compute_inv_freq(8, 10000.0, None)  # [T, 4]
    for x, got in ((q, got_q), (k, got_k)):
        pairs = torch.view_as_complex(x.unflatten(-1, (4, 2)).contiguous())
        rotated = torch.view_as_real(pairs * torch.polar(torch.ones_like(angles),
                                                         angles)[:, None])
        want = torch.cat([rotated[..., 0], rotated[..., 1]], dim=-1)
        torch.testing.assert_close(got, want)
