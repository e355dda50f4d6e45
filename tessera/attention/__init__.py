"""Attention backends, chosen by name from a registry (CLI choices come from it)."""
from __future__ import annotations

import importlib

from tessera.attention.base import AttentionBackend
from tessera.config.fields import register_choices

# name -> "module:Class"; imported lazily so optional kernels cost nothing until chosen
ATTENTION_BACKENDS: dict[str, str] = {
    "torch_native": "tessera.attention.torch_native:TorchNativeAttentionBackend",
    "triton": "tessera.attention.triton:TritonAttentionBackend",
}


register_choices("attention_backend", lambda: ["auto", *sorted(ATTENTION_BACKENDS)])


def get_attention_backend_class(name: str) -> type[AttentionBackend]:
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of "
                         f"{sorted(ATTENTION_BACKENDS)}")
    module, cls = ATTENTION_BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["ATTENTION_BACKENDS", "AttentionBackend", "get_attention_backend_class"]
