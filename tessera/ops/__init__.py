from tessera.ops.activation import SiluAndMul
from tessera.ops.base import MultiPlatformOp
from tessera.ops.layernorm import RMSNorm
from tessera.ops.rotary import RotaryEmbedding, get_rope

__all__ = ["MultiPlatformOp", "RMSNorm", "RotaryEmbedding", "SiluAndMul", "get_rope"]
