"""Test support: make Triton's CPU interpreter round floats the way compiled Triton does.

triton 3.6's interpreter (`triton.runtime.interpreter._convert_float`) truncates fp32 -> bf16
(compiled Triton rounds to nearest even) and mis-rounds fp32 -> fp8 when the mantissa carries into
the exponent (126.3 becomes 64 instead of 128). Comparing kernels with their torch references on
CPU would then test the interpreter, not the kernel. This replaces that one conversion with
torch's own round-to-nearest-even casts; every other part of the interpreter is untouched.
tests/ops/conftest.py installs it around each test of this directory only, so other suites keep
the interpreter they were written against.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

_TORCH_FLOAT = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    "fp8e4nv": torch.float8_e4m3fn, "fp8e5": torch.float8_e5m2, "fp64": torch.float64,
}
_BITS = {64: (np.uint64, torch.int64), 32: (np.uint32, torch.int32),
         16: (np.uint16, torch.int16), 8: (np.uint8, torch.uint8)}
_SIGNED_NP = {64: np.int64, 32: np.int32, 16: np.int16, 8: np.uint8}


def install() -> Callable[[], None]:
    """Patch the interpreter's float conversion; returns the function that undoes it."""
    from triton.runtime import interpreter

    original = interpreter._convert_float
    if getattr(original, "_tessera_rne", False):
        return lambda: None
    rtne = interpreter._ir.ROUNDING_MODE.RTNE

    def convert_float(input, input_dtype, output_dtype, rounding_mode):
        src = _TORCH_FLOAT.get(input_dtype.name)
        dst = _TORCH_FLOAT.get(output_dtype.name)
        if src is None or dst is None or rounding_mode not in (None, rtne):
            return original(input, input_dtype, output_dtype, rounding_mode)
        in_bits, out_bits = input_dtype.primitive_bitwidth, output_dtype.primitive_bitwidth
        raw = np.ascontiguousarray(input).view(_SIGNED_NP[in_bits])
        values = torch.from_numpy(raw.copy()).view(src)
        converted = values.to(dst).view(_BITS[out_bits][1]).numpy()
        return converted.view(_BITS[out_bits][0]).reshape(input.shape)

    convert_float._tessera_rne = True
    interpreter._convert_float = convert_float

    def restore() -> None:
        interpreter._convert_float = original

    return restore
