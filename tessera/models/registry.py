"""Model classes keyed by the HF `architectures` name. A new model is one module implementing
tessera.models.base.CausalLM plus one entry here (or a `register_model` call)."""
from __future__ import annotations

import importlib

from tessera.models.base import CausalLM

_MODELS: dict[str, str | type[CausalLM]] = {
    "DeepseekV2ForCausalLM": "tessera.models.deepseek_v2:DeepseekV2ForCausalLM",
    "DeepseekV3ForCausalLM": "tessera.models.deepseek_v2:DeepseekV3ForCausalLM",
    "LlamaForCausalLM": "tessera.models.llama:LlamaForCausalLM",
    "MistralForCausalLM": "tessera.models.llama:MistralForCausalLM",
    "MixtralForCausalLM": "tessera.models.mixtral:MixtralForCausalLM",
    "Qwen2ForCausalLM": "tessera.models.llama:Qwen2ForCausalLM",
    "Qwen3ForCausalLM": "tessera.models.llama:Qwen3ForCausalLM",
    "Qwen3MoeForCausalLM": "tessera.models.qwen3_moe:Qwen3MoeForCausalLM",
}


def register_model(architecture: str, model: str | type[CausalLM]) -> None:
    """Adds an architecture: a CausalLM subclass or its "module:Class" path (imported lazily)."""
    _MODELS[architecture] = model


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[CausalLM]:
    if architecture not in _MODELS:
        raise ValueError(f"model architecture {architecture!r} is not supported; supported: "
                         f"{', '.join(supported_architectures())}")
    entry = _MODELS[architecture]
    if not isinstance(entry, str):
        return entry
    module, cls = entry.split(":")
    return getattr(importlib.import_module(module), cls)
