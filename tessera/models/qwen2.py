"""Qwen2: the Llama code with q/k/v bias (ModelConfig sets attention_bias for model_type qwen2)."""
from tessera.models.llama import Qwen2ForCausalLM

__all__ = ["Qwen2ForCausalLM"]
