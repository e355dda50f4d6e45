"""Weight formats of linear layers (QuantMethod) and the quantizers they use."""
from tessera.layers.quantization.base import (
    QUANT_METHODS,
    QuantMethod,
    UnquantizedLinearMethod,
    get_quant_method,
    set_weight_loader,
)

__all__ = ["QUANT_METHODS", "QuantMethod", "UnquantizedLinearMethod", "get_quant_method",
           "set_weight_loader"]
