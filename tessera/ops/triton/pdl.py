"""Programmatic dependent launch (PDL, Hopper and later) for the decode-path Triton kernels.

At one decode token a layer is a chain of ~6 small dependent kernels; between two of them the GPU
idles while the next one launches and ramps up. With PDL a kernel is launched with the
programmatic-stream-serialization attribute, so it may start while its predecessor still runs:
each of our kernels first signals `griddepcontrol.launch_dependents` (the next kernel may start)
and then waits with `griddepcontrol.wait` until the previous kernel has completed and its memory
is visible. Only work that reads nothing a predecessor writes may happen before the wait: the
GEMV loads its first weight tile there; every other kernel waits first. Nothing is written before
the wait. A kernel launched without PDL after one of ours (cuBLAS, torch ops) simply waits for it
as usual, and ours after such a kernel start when it has completed: mixing is safe.

When the dependent may launch matters for the GEMV: signalled at its start, the next kernel's
programs take SM slots (and wait there) while a GEMV of several waves of programs (llama3-8b's
gate_up: 1792 programs) still needs them; so the GEMV signals after its weight loop ("late"),
and the small one-wave kernels at their start. H200, bench latency, decode graphs, bs=1, with
the GEMV and its fused input stages (benchmarks/results/2026-11-23_h200_s3_decode_pdl.txt):
qwen3-0.6b 1.142 ms/step without PDL, 1.124 with the early GEMV signal, 0.923 late; llama3-8b
4.662, 4.782 early (slower), 4.355 late. TESSERA_PDL_GEMV_TRIGGER=early|late (default late)
keeps that experiment repeatable.

On by default (the ModelRunner calls `set_enabled`; `--disable-pdl` turns it off), and used only
on CUDA devices of compute capability >= 9.0 with compiled Triton (never in the interpreter or
on other platforms). Outside a ModelRunner (tests, kernel benchmarks) it is off unless
TESSERA_PDL=1 or `set_enabled(True)`.
"""
from __future__ import annotations

import os

import torch

from tessera.platforms import platform_of

ENV_ENABLED = os.environ.get("TESSERA_PDL", "0") == "1"
_enabled = ENV_ENABLED
# When a GEMV lets its dependent launch: "early" (its first instruction) or "late" (after its
# weight loop); see the module docstring.
GEMV_TRIGGER = os.environ.get("TESSERA_PDL_GEMV_TRIGGER", "late")
if GEMV_TRIGGER not in ("early", "late"):
    raise ValueError(f"TESSERA_PDL_GEMV_TRIGGER must be early or late, got {GEMV_TRIGGER!r}")


def enabled() -> bool:
    """Whether PDL is requested (use_pdl also checks the device)."""
    return _enabled


def set_enabled(flag: bool) -> None:
    """Turn PDL on or off for kernels launched from now on (benchmarks, tests)."""
    global _enabled
    _enabled = flag


def use_pdl(device: torch.device) -> bool:
    """Whether kernels launched on `device` now use PDL."""
    if not _enabled or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return platform_of(device).supports_pdl(device)


def launch_options(enabled: bool) -> dict[str, bool]:
    """Extra launch keyword arguments for a Triton kernel (its PDL constexpr set alike)."""
    return {"launch_pdl": True} if enabled else {}
