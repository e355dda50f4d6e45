"""Weight formats of linear layers (QuantMethod) and MoE experts (MoEMethod), the model-wide
QuantConfig that picks them, and the quantizers they use. Block FP8 is
tessera.layers.quantization.fp8 (imported where a model is loaded, not here: importing this
package must stay cheap for every layer module)."""
from tessera.layers.quantization.base import (
    MoEMethod,
    QuantConfig,
    QuantMethod,
    UnquantizedLinearMethod,
    current_quant_config,
    default_linear_method,
    quantization,
    set_weight_loader,
)

__all__ = ["MoEMethod", "QuantConfig", "QuantMethod", "UnquantizedLinearMethod",
           "current_quant_config", "default_linear_method", "quantization", "set_weight_loader"]
