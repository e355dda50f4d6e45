from tessera.ops.activation import SiluAndMul
from tessera.ops.base import MultiPlatformOp, native_ops, use_native_ops
from tessera.ops.layernorm import RMSNorm
from tessera.ops.library import register_fake_if_exists
from tessera.ops.linear import linear
from tessera.ops.qk_norm_rope import QKNormRotary
from tessera.ops.quant import (
    PerTokenGroupQuantFP8,
    per_token_group_quant_fp8,
    per_token_group_quant_fp8_torch,
)
from tessera.ops.rotary import RotaryEmbedding, get_rope

__all__ = [
    "MultiPlatformOp", "PerTokenGroupQuantFP8", "QKNormRotary", "RMSNorm", "RotaryEmbedding",
    "SiluAndMul", "get_rope", "linear", "native_ops", "per_token_group_quant_fp8",
    "per_token_group_quant_fp8_torch", "register_fake_if_exists", "use_native_ops",
]
