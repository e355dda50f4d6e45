"""Launching a compiled Triton kernel again without `JITFunction.run`.

`kernel[grid](*args)` goes through `JITFunction.run` on every call: it binds the arguments,
specialises each one (dtype, 16-byte alignment of pointers, divisibility of integers), hashes
that into a cache key, looks the compiled kernel up, builds launch metadata for the profiling
hooks, and only then calls the compiled kernel's C launcher. On the H200 machine's host that is
~30 us a launch; the launcher itself is ~5 us. A piecewise-graph prefill launches the extend
attention kernel once per layer between graph replays, so for a small model the JIT's
bookkeeping is most of the host time of a forward (qwen3-0.6b, 256 tokens: ~1.1 ms of a 1.6 ms
forward, `benchmarks/results/2026-11-23_h200_s5_launch_cost.json`).

`KernelLauncher` keeps, per *variant key*, the compiled kernel the JIT chose for the first call
with that key, and later calls with the key go straight to its launcher. The caller picks the
key so that it determines the JIT's specialisation: every argument that is fixed for the
caller's lifetime (strides, dtypes, the tensors' alignment) is fixed per launcher instance, and
the key covers what varies (e.g. the 16-byte alignment of per-batch metadata tensors).
`verify` (tests: `VERIFY`) checks every direct launch against the JIT's own cache key.

Direct launches are used only for compiled kernels (not under TRITON_INTERPRET) and only while
no launch hook is installed (a profiler such as proton installs one: then every call goes
through the JIT so the hook sees it).
"""
from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from typing import Any

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
# check every direct launch against the JIT (tests; TESSERA_VERIFY_LAUNCH=1)
VERIFY = os.environ.get("TESSERA_VERIFY_LAUNCH") == "1"


def _hooks_installed() -> bool:
    from triton import knobs

    hook = knobs.runtime.launch_enter_hook
    return hook is not None and bool(getattr(hook, "calls", True))


class KernelLauncher:
    """`fn[grid](*args, **kwargs)` through the compiled kernel's own launcher after the first call
    per variant key. `args` are all positional (the kernel's non-constexpr parameters first, in
    order); `kwargs` hold the constexprs and launch options and must be the same on every call
    with one key."""

    def __init__(self, fn: Any, verify: bool | None = None) -> None:
        self.fn = fn
        self.verify = VERIFY if verify is None else verify
        # compiled kernels are JITFunctions (device_caches); interpreted ones are not
        self.direct = not _INTERPRETED and hasattr(fn, "device_caches")
        self._variants: dict[Hashable, tuple[Any, tuple]] = {}
        self.jit_launches = 0
        self.direct_launches = 0

    def __call__(self, key: Hashable, grid: Sequence[int], args: Sequence[Any],
                 kwargs: dict[str, Any]) -> None:
        variant = self._variants.get(key) if self.direct else None
        if variant is None or _hooks_installed():
            self._jit_launch(key, grid, args, kwargs)
            return
        kernel, tail = variant
        if self.verify:
            self._check(kernel, args, kwargs)
        from triton.runtime import driver

        stream = driver.active.get_current_stream(driver.active.get_current_device())
        g1 = grid[1] if len(grid) > 1 else 1
        g2 = grid[2] if len(grid) > 2 else 1
        kernel.run(grid[0], g1, g2, stream, kernel.function, kernel.packed_metadata, None, None,
                   None, *args, *tail)
        self.direct_launches += 1

    def _jit_launch(self, key: Hashable, grid: Sequence[int], args: Sequence[Any],
                    kwargs: dict[str, Any]) -> None:
        kernel = self.fn[tuple(grid)](*args, **kwargs)
        self.jit_launches += 1
        if not self.direct or kernel is None or key in self._variants:
            return
        if hasattr(kernel, "result"):  # an async compile's future
            kernel = kernel.result()
        # the launcher takes every parameter in order, constexprs included (it skips them)
        tail = []
        for param in self.fn.params[len(args):]:
            if param.name in kwargs:
                tail.append(kwargs[param.name])
            elif param.has_default:
                tail.append(param.default)
            else:
                raise TypeError(f"{self.fn.__name__}: no value for parameter {param.name!r}")
        self._variants[key] = (kernel, tuple(tail))

    def _check(self, kernel: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> None:
        """The JIT would launch this very kernel for these arguments."""
        from triton.runtime import driver
        from triton.runtime.jit import compute_cache_key

        kernel_cache, key_cache, _, _, binder = self.fn.device_caches[
            driver.active.get_current_device()]
        _, specialization, options = binder(*args, **_as_jit_run(self.fn, kwargs))
        chosen = kernel_cache.get(compute_cache_key(key_cache, specialization, options))
        if chosen is not kernel:
            raise AssertionError(f"{self.fn.__name__}: the variant key does not determine the "
                                 f"kernel's specialisation {specialization}")


def _as_jit_run(fn: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """kwargs as `JITFunction.run` completes them before it binds (its cache key hashes them)."""
    try:
        from triton import knobs
    except ImportError:  # older Triton: run adds nothing
        return kwargs
    return {**kwargs, "debug": kwargs.get("debug", fn.debug) or knobs.runtime.debug,
            "instrumentation_mode": knobs.compilation.instrumentation_mode}


def metadata_variant(*tensors: Any) -> tuple:
    """A variant key for per-batch tensor arguments: what the JIT specialises them on (dtype and
    16-byte alignment of the data pointer)."""
    return tuple((t.dtype, t.data_ptr() % 16 == 0) for t in tensors)


__all__ = ["KernelLauncher", "metadata_variant"]
