"""Attention backends, chosen by name from a registry (CLI choices come from it)."""
from __future__ import annotations

import importlib

from tessera.attention.base import AttentionBackend
from tessera.cache.spec import KVCacheSpec, MLASpec
from tessera.config.fields import register_choices

# name -> "module:Class"; imported lazily so optional kernels cost nothing until chosen
ATTENTION_BACKENDS: dict[str, str] = {
    "torch_native": "tessera.attention.torch_native:TorchNativeAttentionBackend",
    "triton": "tessera.attention.triton:TritonAttentionBackend",
}
# the same names for models whose KV cache is an MLASpec (DeepSeek-V2/V3's latent cache): a name
# missing here has no MLA implementation and is refused for such a model
MLA_ATTENTION_BACKENDS: dict[str, str] = {
    "torch_native": "tessera.attention.torch_native_mla:TorchNativeMLABackend",
    "triton": "tessera.attention.triton_mla:TritonMLABackend",
}


register_choices("attention_backend", lambda: ["auto", *sorted(ATTENTION_BACKENDS)])


def get_attention_backend_class(name: str, kv_spec: KVCacheSpec | None = None
                                ) -> type[AttentionBackend]:
    """The backend class called `name` for a model whose KV-cache spec is `kv_spec` (an MLASpec
    picks from MLA_ATTENTION_BACKENDS)."""
    if name not in ATTENTION_BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of "
                         f"{sorted(ATTENTION_BACKENDS)}")
    table = ATTENTION_BACKENDS
    if isinstance(kv_spec, MLASpec):
        if name not in MLA_ATTENTION_BACKENDS:
            raise ValueError(f"attention backend {name!r} has no MLA implementation (this model "
                             f"has a latent KV cache); choose one of "
                             f"{sorted(MLA_ATTENTION_BACKENDS)}")
        table = MLA_ATTENTION_BACKENDS
    module, cls = table[name].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["ATTENTION_BACKENDS", "MLA_ATTENTION_BACKENDS", "AttentionBackend", "get_attention_backend_class"]
