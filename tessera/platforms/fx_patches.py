"""FX codegen fix for device constants when `torch.device` has been replaced (MUSA stacks).

What fails (torch 2.11 - 2.13): FX prints a `torch.device` constant through `repr`, e.g.
`x.to(device = device(type='musa', index=0))`, and binds the name `device` in the generated
module's globals by pre-registering its "custom builtins". `CodeGen._gen_python_code.add_global`
skips objects that come from torch *unless* `obj == torch.device`, comparing against the CURRENT
`torch.device` attribute. The MUSA CUDA-compatibility layer (torchada, which SGLang and vLLM use on
Moore Threads GPUs) replaces `torch.device` with a factory that maps "cuda" to "musa". After that
the comparison fails, `device` is never bound, and every GraphModule holding a device constant
raises `NameError: name 'device' is not defined` when it runs: Dynamo's graphs, split_module
pieces of the piecewise backend, AOT graphs. With an unpatched `torch.device`, a renamed
PrivateUse1 device ("musa") alone prints and runs fine; the failure needs the replaced factory.

The fix is minimal: after FX generates code, bind `device` to the real device class
(`torch._C.device`, which no wrapper replaces) when the source uses it and it is unbound. The
generated text is unchanged, so graph caches and printed graphs stay identical to upstream's.
"""
from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch.fx.graph import CodeGen

logger = logging.getLogger(__name__)

_PATCH_MARK = "_tessera_binds_device"


def patch_fx_device_constants() -> None:
    """Make FX-generated code resolve `device(...)` constants. Idempotent; process-wide."""
    original = CodeGen._gen_python_code
    if getattr(original, _PATCH_MARK, False):
        return

    @functools.wraps(original)
    def gen_python_code(self: CodeGen, *args: Any, **kwargs: Any):
        code = original(self, *args, **kwargs)
        if "device" not in code.globals and "device(" in code.src:
            code.globals["device"] = torch._C.device
        return code

    setattr(gen_python_code, _PATCH_MARK, True)
    CodeGen._gen_python_code = gen_python_code
    logger.debug("patched torch.fx codegen to bind `device` in generated code")


def fx_device_constants_patched() -> bool:
    return bool(getattr(CodeGen._gen_python_code, _PATCH_MARK, False))


__all__ = ["fx_device_constants_patched", "patch_fx_device_constants"]
