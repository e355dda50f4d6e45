"""Triton kernels of the `triton` attention backend (CUDA; CPU through TRITON_INTERPRET=1).

Their reference is `tessera.attention.torch_native`; tests/attention/test_triton_attention.py
compares them. The MLA kernels (mla_decode, mla_extend: absorbed-form attention over the
latent cache) are compared with a reference in tests/attention/test_triton_mla.py.
TRITON_INTERPRET is read when these modules are imported (at @triton.jit time), so it must be
set before the first import.
"""
from tessera.attention.triton_ops.decode_attention import (
    decode_attention,
    decode_counters_shape,
    decode_head_block,
    decode_head_programs,
    decode_workspace_shape,
)
from tessera.attention.triton_ops.extend_attention import extend_attention, extend_config
from tessera.attention.triton_ops.kv_store import store_kv
from tessera.attention.triton_ops.mla_decode import mla_decode_attention, store_latent
from tessera.attention.triton_ops.mla_extend import mla_extend_attention

__all__ = ["decode_attention", "decode_counters_shape", "decode_head_block",
           "decode_head_programs", "decode_workspace_shape", "extend_attention", "extend_config",
           "mla_decode_attention", "mla_extend_attention", "store_kv", "store_latent"]
