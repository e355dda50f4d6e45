"""Model classes keyed by the HF `architectures` name."""
from __future__ import annotations

import importlib

from torch import nn

_MODELS: dict[str, str] = {
    "LlamaForCausalLM": "tessera.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "tessera.models.llama:MistralForCausalLM",
    "Qwen2ForCausalLM": "tessera.models.qwen2:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "tessera.models.qwen3:Qwen3ForCausalLM",
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[nn.Module]:
    if architecture not in _MODELS:
        raise ValueError(f"model architecture {architecture!r} is not supported; supported: "
                         f"{', '.join(supported_architectures())}")
    module, cls = _MODELS[architecture].split(":")
    return getattr(importlib.import_module(module), cls)
