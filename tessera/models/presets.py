"""Built-in model presets: an HF-style config (no files), dummy weights, the byte tokenizer.

Shapes of qwen3-0.6b, qwen3-30b-a3b, llama3-8b and deepseek-v2-lite(-fp8) are the real models',
so benchmarks on random weights measure real costs (routing on random weights spreads tokens over the experts more
evenly than a trained router does). Usable wherever a model path is accepted.
"""
from __future__ import annotations

from typing import Any

_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
         "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "torch_dtype": "float32",
         "bos_token_id": 256, "eos_token_id": 256}

# deepseek-ai/DeepSeek-V2-Lite's config.json (bos/eos are the byte tokenizer's, as in every
# preset here)
_DEEPSEEK_V2_LITE = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2",
    "hidden_size": 2048, "intermediate_size": 10944, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 102400,
    "rms_norm_eps": 1e-6, "max_position_embeddings": 163840, "tie_word_embeddings": False,
    "attention_bias": False, "q_lora_rank": None, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "first_k_dense_replace": 1, "moe_layer_freq": 1,
    "n_routed_experts": 64, "n_shared_experts": 2, "num_experts_per_tok": 6,
    "moe_intermediate_size": 1408, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
    "norm_topk_prob": False, "routed_scaling_factor": 1.0, "scoring_func": "softmax",
    "rope_theta": 10000.0,
    "rope_scaling": {"type": "yarn", "factor": 40, "beta_fast": 32, "beta_slow": 1,
                     "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096},
    "torch_dtype": "bfloat16", "bos_token_id": 256, "eos_token_id": 256}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny-llama": {**_TINY, "architectures": ["LlamaForCausalLM"], "model_type": "llama",
                   "rope_theta": 500000.0, "tie_word_embeddings": False,
                   "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 1024}},
    "tiny-qwen3": {**_TINY, "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                   "rope_theta": 1000000.0, "tie_word_embeddings": True},
    # 3 layers, the middle one dense (mlp_only_layers): both MLP kinds, the last one sparse
    "tiny-qwen3-moe": {**_TINY, "architectures": ["Qwen3MoeForCausalLM"],
                       "model_type": "qwen3_moe",
                       "num_hidden_layers": 3, "rope_theta": 1000000.0,
                       "tie_word_embeddings": False, "num_experts": 8, "num_experts_per_tok": 2,
                       "moe_intermediate_size": 32, "norm_topk_prob": True,
                       "decoder_sparse_step": 1, "mlp_only_layers": [1]},
    # MLA without q_lora (q_proj), YaRN; 3 layers: one dense, then two sparse with two shared
    # experts and group-limited routing (4 groups of 2, the best 2 groups, top-3)
    "tiny-deepseek-v2": {**_TINY, "architectures": ["DeepseekV2ForCausalLM"],
                         "model_type": "deepseek_v2", "num_hidden_layers": 3,
                         "num_key_value_heads": 4, "tie_word_embeddings": False,
                         "q_lora_rank": None, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
                         "qk_rope_head_dim": 8, "v_head_dim": 16, "first_k_dense_replace": 1,
                         "moe_layer_freq": 1, "n_routed_experts": 8, "n_shared_experts": 2,
                         "num_experts_per_tok": 3, "moe_intermediate_size": 32,
                         "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
                         "norm_topk_prob": False, "routed_scaling_factor": 1.0,
                         "scoring_func": "softmax", "rope_theta": 10000.0,
                         "rope_scaling": {"type": "yarn", "factor": 4.0, "beta_fast": 32,
                                          "beta_slow": 1, "mscale": 0.707,
                                          "mscale_all_dim": 0.707,
                                          "original_max_position_embeddings": 1024}},
    "deepseek-v2-lite": _DEEPSEEK_V2_LITE,
    # block-FP8 weights ([128, 128] tiles, activations quantized per token group at run time)
    "deepseek-v2-lite-fp8": {**_DEEPSEEK_V2_LITE,
                             "quantization_config": {"quant_method": "fp8",
                                                     "weight_block_size": [128, 128],
                                                     "activation_scheme": "dynamic"}},
    "qwen3-0.6b": {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3",
                   "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
                   "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
                   "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                   "max_position_embeddings": 40960, "tie_word_embeddings": True,
                   "torch_dtype": "bfloat16", "bos_token_id": 256, "eos_token_id": 256},
    "qwen3-30b-a3b": {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
                      "hidden_size": 2048, "intermediate_size": 6144, "num_hidden_layers": 48,
                      "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                      "vocab_size": 151936, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
                      "max_position_embeddings": 40960, "tie_word_embeddings": False,
                      "num_experts": 128, "num_experts_per_tok": 8,
                      "moe_intermediate_size": 768, "norm_topk_prob": True,
                      "decoder_sparse_step": 1, "mlp_only_layers": [],
                      "torch_dtype": "bfloat16", "bos_token_id": 256, "eos_token_id": 256},
    "llama3-8b": {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
                  "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                  "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                  "vocab_size": 128256, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
                  "max_position_embeddings": 8192, "tie_word_embeddings": False,
                  "torch_dtype": "bfloat16", "bos_token_id": 256, "eos_token_id": 256},
}


def is_preset(name: str | None) -> bool:
    return name in PRESETS
