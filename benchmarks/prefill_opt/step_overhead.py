"""Where a `tessera bench latency` prefill step spends what the forward alone does not (GPU).

The bench's prefill step (TesseraLatency.run) is: allocate KV slots, ForwardBatch.build, the
forward, the sampler, .tolist(). bench_pcg times only the forward (events around it), and the
two differ by 0.2-0.4 ms at 16 tokens. Here the same step, with host timestamps between the parts
and device events at the same points, median of --repeat steps (random prompt ids):
  host_us: alloc+build, forward (host), sample (host), tolist (waits for the GPU);
  device_us: from the step's first event to the forward's first event (the GPU idles while the
  host builds the batch), the forward, the sampling, and the whole step on the device.

    python benchmarks/prefill_opt/step_overhead.py --case llama3-8b:16,256 --out step.json

--build-parts (no model): host us per call of ForwardBatch.build's pieces for a 16-token
prefill: the pinned staging allocation, the list -> tensor conversions, the non-blocking copy,
and the whole build.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from tessera.bench.pcg import build_runner, free_memory, parse_case


def step_parts(bench, runner, n: int, repeat: int) -> dict:
    from tessera.forward.batch import ForwardBatch, ForwardMode

    info = bench._greedy_info(1)
    host: dict[str, list[float]] = {k: [] for k in ("build", "forward", "sample", "tolist",
                                                     "total")}
    device: dict[str, list[float]] = {k: [] for k in ("idle_before_forward", "forward",
                                                       "sample", "total")}
    events = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
    for i in range(repeat + 3):
        prompt = torch.randint(0, runner.model_config.vocab_size, (n,),
                               generator=torch.Generator().manual_seed(i)).tolist()
        row = runner.req_to_token_pool.alloc()
        try:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            events[0].record()
            slots = runner.allocator.alloc(n)
            fb = ForwardBatch.build(ForwardMode.EXTEND, prompt, [row], [0], [n], slots,
                                    runner.device)
            t1 = time.perf_counter()
            events[1].record()
            logits = runner.forward(fb).next_token_logits
            t2 = time.perf_counter()
            events[2].record()
            tokens = bench.sampler.sample(logits, info).token_ids
            t3 = time.perf_counter()
            events[3].record()
            tokens.tolist()
            torch.cuda.synchronize()
            t4 = time.perf_counter()
        finally:
            runner.req_to_token_pool.free(row)
            runner.allocator.clear()
        if i < 3:
            continue
        for key, value in zip(host, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0)):
            host[key].append(value * 1e6)
        device["idle_before_forward"].append(events[0].elapsed_time(events[1]) * 1e3)
        device["forward"].append(events[1].elapsed_time(events[2]) * 1e3)
        device["sample"].append(events[2].elapsed_time(events[3]) * 1e3)
        device["total"].append(events[0].elapsed_time(events[3]) * 1e3)
    return {"host_us": {k: round(statistics.median(v), 1) for k, v in host.items()},
            "device_us": {k: round(statistics.median(v), 1) for k, v in device.items()}}


def cold_us(fn, calls: int = 40) -> float:
    """Median host us of one call made after a synchronize and 2 ms of idle (as a step after
    the GPU went idle)."""
    samples = []
    for _ in range(calls):
        torch.cuda.synchronize()
        time.sleep(0.002)
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    return round(statistics.median(samples), 2)


def build_parts(n: int = 16) -> dict[str, dict[str, float]]:
    from launch_cost import per_call_us

    from tessera.forward.batch import ForwardBatch, ForwardMode

    dev = torch.device("cuda")
    ids = list(range(100, 100 + n))
    slots = torch.arange(1, n + 1, dtype=torch.int64, device=dev)
    pinned = torch.empty(2 * n + 3, dtype=torch.int64, pin_memory=True)
    longs = [*range(n), 0, *ids]
    free = torch.arange(4096, dtype=torch.int64, device=dev)
    parts = {
        "pinned_empty": lambda: torch.empty(2 * n + 3, dtype=torch.int64, pin_memory=True),
        "pageable_empty": lambda: torch.empty(2 * n + 3, dtype=torch.int64),
        "tensor_from_list": lambda: torch.tensor(longs, dtype=torch.int64),
        "copy_into_pinned": lambda: pinned[:2 * n + 1].copy_(
            torch.tensor(longs, dtype=torch.int64)),
        "h2d_non_blocking": lambda: pinned.to(dev, non_blocking=True),
        "device_slice": lambda: (free[:n], free[n:]),
        "event_record": lambda: torch.cuda.Event().record(),
        "build": lambda: ForwardBatch.build(ForwardMode.EXTEND, ids, [0], [0], [n], slots, dev),
    }
    return {"warm": {k: per_call_us(fn) for k, fn in parts.items()},
            "cold": {k: cold_us(fn) for k, fn in parts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=parse_case, action="append", default=[])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--build-parts", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    from tessera.bench.latency import TesseraLatency

    result = {"device": torch.cuda.get_device_name(), "cases": []}
    if args.build_parts:
        result["build_parts_us"] = build_parts()
        print(json.dumps(result["build_parts_us"]), flush=True)
    for model, sizes in args.case:
        with torch.inference_mode():
            runner, _ = build_runner(model, max(sizes), True, "eager", "cuda")
            bench = TesseraLatency(runner)
            for n in sizes:
                row = {"model": model, "tokens": n, **step_parts(bench, runner, n, args.repeat)}
                print(json.dumps(row), flush=True)
                result["cases"].append(row)
        platform = runner.platform
        del runner, bench
        free_memory(platform)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
