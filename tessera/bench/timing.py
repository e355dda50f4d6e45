"""Per-call timing shared by the micro-benchmarks (attention, sampling, ops)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

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
