"""Recompile detection: after the one trace, a Dynamo recompile at run time is a bug.

The piecewise backbone is traced once for every token count. A recompile would mean a guard
failed (a shape, dtype or module attribute the trace specialised on changed): tracing and
compiling again takes seconds to minutes in the middle of serving and the new graph would have no
captured sizes. So once the first compile is done, calls through Dynamo run under its
`fail_on_recompile` stance: a guard failure raises instead of compiling, the monitor logs it with
Dynamo's reason and counts it, and the caller runs that batch eagerly. Dynamo's recompile-limit
error is handled the same way, so hitting it never takes the server down. (Most forwards do not go
through Dynamo at all: see `tessera.compilation.dispatch`. Those that do are the trace and any
call that does not look like it.)
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

_RECOMPILE_MESSAGE = "Detected recompile"  # torch.compiler.set_stance("fail_on_recompile") error


def _recompile_error_types() -> tuple[type[BaseException], ...]:
    from torch._dynamo import exc

    return tuple(getattr(exc, name) for name in ("RecompileError", "FailOnRecompileLimitHit")
                 if hasattr(exc, name))


def is_recompile_error(error: BaseException) -> bool:
    """A refused recompile or a hit recompile limit (Dynamo), as opposed to a real failure."""
    return (isinstance(error, _recompile_error_types())
            or (isinstance(error, RuntimeError) and _RECOMPILE_MESSAGE in str(error)))


@dataclasses.dataclass
class CompileMonitor:
    """Counts backend compiles of one compiled function and refused run-time recompiles."""

    name: str
    compiles: int = 0            # times Dynamo handed a graph to our backend
    refused_recompiles: int = 0  # guard failures at run time (each batch ran eagerly instead)

    def on_compile(self) -> None:
        """Called by the backend for every graph Dynamo hands it."""
        self.compiles += 1
        if self.compiles > 1:
            logger.warning("%s: Dynamo compiled the backbone again (compile #%d); every token "
                           "count should share the first trace. This is a bug: please report it",
                           self.name, self.compiles)

    def call(self, fn: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """Run `fn(*args)` refusing recompiles: (True, result), or (False, None) when Dynamo
        would have had to recompile (logged; the caller falls back to eager)."""
        if self.compiles == 0:  # the first call traces; nothing to refuse yet
            return True, fn(*args)
        try:
            with torch.compiler.set_stance("fail_on_recompile"):
                return True, fn(*args)
        except Exception as error:
            if not is_recompile_error(error):
                raise
            self.refused_recompiles += 1
            logger.warning("%s: refused a Dynamo recompile (#%d), running this batch eagerly. "
                           "This is a bug: please report it. %s", self.name,
                           self.refused_recompiles, error)
            return False, None


__all__ = ["CompileMonitor", "is_recompile_error"]
