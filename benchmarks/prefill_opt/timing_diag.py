"""Why the event-timed prefill is longer than its kernels (GPU).

`profile_prefill.py` found llama3-8b's piecewise-graph prefill at 1024 tokens spending 20.1 ms
between its first and last kernel under torch.profiler while device events around the same
forward (bench_pcg) said 24.6 ms (and ~0.9 ms apart at 256 tokens). The profile's prompt was one
token id repeated, bench_pcg's random ids. This measures one request of N new tokens through
ModelRunner.forward four ways, with random and with constant prompt ids, on one runner, with
the SM clock, power and throttle reasons sampled (NVML through ctypes, every ~2 ms, in a
thread) during each:

  sync      what bench_pcg times: synchronize, event, forward, event, synchronize; per forward
  b2b       `--repeat` forwards back to back between two events (the host runs ahead); per forward
  profiled  one forward under torch.profiler (CPU + CUDA): its kernels' span, the idle time
            inside it, and the host time from entering forward() to the first kernel's launch
            (with the host ops in that stretch, longest first; under the profiler that stretch
            is mostly its own buffer set-up, so read it with care)
  spaced    like sync, with a 20 ms host sleep after each synchronize (a cooler, idle GPU)

    python benchmarks/prefill_opt/timing_diag.py --model llama3-8b --tokens 16 256 1024 --out d.json
"""
from __future__ import annotations

import argparse
import ctypes
import itertools
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Self

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tessera.bench.pcg import build_runner, prefill_batch, summarize


class ClockSampler:
    """SM clock (MHz), power (W) and the active clock-throttle-reason bits of GPU 0, sampled in
    a thread while `with` is open. Empty when NVML is not loadable."""

    def __init__(self, period_s: float = 0.002) -> None:
        self.period_s = period_s
        self.samples: list[tuple[int, float, int]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            self.nvml = ctypes.CDLL("libnvidia-ml.so.1")
            assert self.nvml.nvmlInit_v2() == 0
            self.handle = ctypes.c_void_p()
            assert self.nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.handle)) == 0
            self._reasons = getattr(self.nvml, "nvmlDeviceGetCurrentClocksEventReasons", None)
            if self._reasons is None:  # the name before driver 535
                self._reasons = self.nvml.nvmlDeviceGetCurrentClocksThrottleReasons
        except (OSError, AssertionError, AttributeError):
            self.nvml = None

    def _sample(self) -> tuple[int, float, int]:
        clock, power, reasons = ctypes.c_uint(), ctypes.c_uint(), ctypes.c_ulonglong()
        self.nvml.nvmlDeviceGetClockInfo(self.handle, 1, ctypes.byref(clock))  # NVML_CLOCK_SM
        self.nvml.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(power))    # mW
        self._reasons(self.handle, ctypes.byref(reasons))
        return clock.value, power.value / 1000, reasons.value

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.samples.append(self._sample())
            time.sleep(self.period_s)

    def __enter__(self) -> Self:
        if self.nvml is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def report(self) -> dict[str, Any]:
        if not self.samples:
            return {"samples": 0}
        clocks = [s[0] for s in self.samples]
        power = [s[1] for s in self.samples]
        reasons: dict[str, int] = {}
        for s in self.samples:
            reasons[hex(s[2])] = reasons.get(hex(s[2]), 0) + 1
        return {"samples": len(self.samples), "sm_mhz": summarize(clocks),
                "power_w": summarize(power), "throttle_reasons": reasons}


def timed_sync(fn: Callable[[], Any], repeat: int, sleep_s: float = 0.0) -> list[float]:
    out = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        if sleep_s:
            time.sleep(sleep_s)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end))
    return out


def timed_b2b(fn: Callable[[], Any], repeat: int, rounds: int = 5) -> list[float]:
    out = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            fn()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / repeat)
    return out


def profiled(fn: Callable[[], Any]) -> dict[str, Any]:
    """One forward under torch.profiler: kernel span and idle, and the host stretch from entering
    the forward to the first kernel launched (memcpy/memset count as device work too)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        with record_function("diag::forward"):
            fn()
        torch.cuda.synchronize()
    events = list(prof.events())
    (mark,) = [e for e in events if e.name == "diag::forward" and e.device_type == DeviceType.CPU]
    device = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                    if e.device_type == DeviceType.CUDA)
    idle = sum(max(0.0, b[0] - a[1]) for a, b in itertools.pairwise(device))
    t0 = mark.time_range.start
    first_kernel = device[0][0] if device else t0
    # host ops that started before the first kernel ran: where the prologue's host time goes
    early = sorted(((e.time_range.end - e.time_range.start, e.time_range.start - t0, e.name)
                    for e in events if e.device_type == DeviceType.CPU
                    and t0 <= e.time_range.start < first_kernel and e is not mark),
                   reverse=True)
    return {"host_forward_us": mark.time_range.end - t0,
            "first_kernel_after_us": first_kernel - t0,
            "last_kernel_end_after_us": (device[-1][1] - t0) if device else 0.0,
            "kernel_span_us": (device[-1][1] - device[0][0]) if device else 0.0,
            "idle_us": idle, "device_events": len(device),
            "prologue_host_ops": [{"us": round(d, 1), "at_us": round(a, 1), "op": n[:80]}
                                  for d, a, n in early[:25]]}


def summary_line(model: str, case: dict[str, Any]) -> str:
    def mhz(mode: str) -> float:
        return case[mode]["clocks"].get("sm_mhz", {}).get("median", 0)

    p = case["profiled"]["runs"][-1]
    return (f"{model} N={case['tokens']} {case['ids']} ids: "
            + ", ".join(f"{mode} {case[mode]['ms']['median']:.3f} ms (SM {mhz(mode):.0f} MHz)"
                        for mode in ("sync", "b2b", "spaced"))
            + f"; profiled: kernels span {p['kernel_span_us']:.0f} us with {p['idle_us']:.0f} "
              f"idle")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--ids", choices=["random", "constant"], nargs="+",
                        default=["random", "constant"],
                        help="prompt ids: random (as bench_pcg and bench latency) or all 5")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runner, _ = build_runner(args.model, max(args.tokens), True, "eager", "cuda")
    result: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name(),
                              "cases": []}
    for ids_kind in args.ids:
        for n in args.tokens:
            case: dict[str, Any] = {"tokens": n, "ids": ids_kind}
            with prefill_batch(runner, n, ids_kind) as batch, torch.inference_mode():
                def fn(b: Any = batch) -> Any:
                    return runner.forward(b).next_token_logits

                timed_sync(fn, 5)
                for name, run in (("sync", lambda: timed_sync(fn, args.repeat)),
                                  ("b2b", lambda: timed_b2b(fn, args.repeat)),
                                  ("spaced", lambda: timed_sync(fn, args.repeat, 0.02))):
                    with ClockSampler() as clocks:
                        ms = run()
                    case[name] = {"ms": summarize(ms), "clocks": clocks.report()}
                with ClockSampler() as clocks:
                    prof = [profiled(fn) for _ in range(3)]
                case["profiled"] = {"runs": prof, "clocks": clocks.report()}
            result["cases"].append(case)
            print(summary_line(args.model, case), flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
