"""Timing shared by the benchmarks: per-call device timing of the micro-benchmarks (attention,
sampling, ops) and the record of one prefill + decode run (latency, and its HF comparison)."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import torch

from tessera.platforms import current_platform


def time_ms(fn: Callable[[], Any], warmup: int, repeat: int, inner: int = 1) -> list[float]:
    """Per-call times in ms, one per repeat, each the mean of `inner` back-to-back calls (several
    amortise the event overhead of very short ops): device events where the platform has them,
    else a synchronised wall clock (CPU smoke runs)."""
    platform = current_platform()
    for _ in range(warmup):
        fn()
    platform.synchronize()
    times = []
    for _ in range(repeat):
        start, end = platform.event(enable_timing=True), platform.event(enable_timing=True)
        if start is None:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            times.append((time.perf_counter() - t0) * 1e3 / inner)
            continue
        start.record()
        for _ in range(inner):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / inner)
    return times


@dataclasses.dataclass
class RunTimes:
    """One prefill + decode run of one case."""
    prefill_ms: float
    decode_ms: list[float]
    first_logits: torch.Tensor  # [B, V] float32: next-token logits after the prefill
    prefill_path: str = "eager"
    decode_path: str = "eager"
    # device time of runner.forward per decode step (device events; empty where there are none):
    # the step's wall time minus this is host work the device waited for
    decode_forward_ms: list[float] = dataclasses.field(default_factory=list)
    # the tokens each decode step sampled, as read back ([B] per step)
    decode_tokens: list[list[int]] = dataclasses.field(default_factory=list)
