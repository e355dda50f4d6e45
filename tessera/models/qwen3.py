"""Qwen3: the Llama code with per-head RMSNorm on q and k before rotary embedding."""
from tessera.models.llama import Qwen3ForCausalLM

__all__ = ["Qwen3ForCausalLM"]
