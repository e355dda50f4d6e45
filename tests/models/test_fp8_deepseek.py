"""A block-FP8 DeepSeek-V2 (MLA): the quantized kv_b_proj is dequantized (fp8 * scale_inv) before
the model splits it per head into W_UK / W_UV; the MoE experts, shared experts and MLA
projections hold fp8 weights. Dummy weights on a config whose dims are multiples of 128."""
from __future__ import annotations

import json

import torch

from tessera.models.loader import load_model, load_model_config
from tessera.ops.fp8_reference import dequantize_block_fp8

CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 2,
    "num_attention_heads": 2, "num_key_value_heads": 2, "vocab_size": 300,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 512, "torch_dtype": "float32",
    "tie_word_embeddings": False, "q_lora_rank": None, "kv_lora_rank": 128,
    "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
    "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_routed_experts": 4,
    "n_shared_experts": 1, "num_experts_per_tok": 2, "moe_intermediate_size": 128,
    "topk_method": "greedy", "norm_topk_prob": False, "routed_scaling_factor": 1.0,
    "scoring_func": "softmax", "rope_theta": 10000.0,
    "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128],
                            "activation_scheme": "dynamic"},
}


def test_fp8_kv_b_proj_is_dequantized_before_the_per_head_split(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    model = load_model(str(tmp_path), load_model_config(str(tmp_path)), "dummy", torch.float32,
                       "cpu")
    attn = model.model.layers[1].self_attn
    kv_b = attn.kv_b_proj
    assert kv_b.weight.dtype == torch.float8_e4m3fn and kv_b.weight_scale_inv.shape == (4, 1)
    assert attn.kv_a_proj_with_mqa.weight_scale_inv.shape == (2, 2)  # 192 rows: a partial block
    assert model.model.layers[1].mlp.w13_weight.dtype == torch.float8_e4m3fn
    assert model.model.layers[1].mlp.shared_expert.gate_up_proj.weight.dtype == \
        torch.float8_e4m3fn
    # give the scales distinct values so a wrong block (or none) shows
    kv_b.weight_scale_inv.data = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    attn.absorb_kv_b_proj()
    per_head = dequantize_block_fp8(kv_b.weight, kv_b.weight_scale_inv, (128, 128)).view(
        2, 256, 128)
    torch.testing.assert_close(attn.w_uk, per_head[:, :128], rtol=0, atol=0)
    torch.testing.assert_close(attn.w_uv, per_head[:, 128:].transpose(1, 2), rtol=0, atol=0)
