"""Built-in model presets: an HF-style config (no files), dummy weights, the byte tokenizer.

Shapes of qwen3-0.6b, qwen3-30b-a3b and llama3-8b are the real models', so benchmarks on random
weights measure real costs (routing on random weights spreads tokens over the experts more
evenly than a trained router does). Usable wherever a model path is accepted.
"""
from __future__ import annotations

from typing import Any

_TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 512,
         "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "torch_dtype": "float32",
         "bos_token_id": 256, "eos_token_id": 256}

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
