"""Where a piecewise-graph prefill spends its device time (GPU).

One request of N new tokens through ModelRunner.forward with the piecewise graph (bf16, dummy
weights, real shapes): the forward's device time (events) and host time, then torch.profiler's
device time per forward of every kernel name, largest first; and where the device idles inside
one forward (the gaps between consecutive kernels, by the pair of kernels around them).

    python benchmarks/prefill_opt/profile_prefill.py --model qwen3-0.6b --tokens 256 --out p.json
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from benchmarks.decode_opt.profile_decode import kernel_profile, print_kernel_table
from tessera.bench.pcg import build_runner, prefill_batch, time_prefill


def device_gaps(fn) -> dict:
    """Idle device time inside one forward: the kernels' (and memsets') start/end times from
    torch.profiler, sorted; the idle stretches between consecutive ones, summed by the pair of
    kernel names around them."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in prof.events()
                   if e.device_type == DeviceType.CUDA)
    pairs: dict[str, list[float]] = {}
    idle = 0.0
    for (_, end, before), (start, _, after) in itertools.pairwise(spans):
        gap = max(0.0, start - end)
        idle += gap
        key = f"{before[:40]} -> {after[:40]}"
        entry = pairs.setdefault(key, [0.0, 0])
        entry[0] += gap
        entry[1] += 1
    by_pair = sorted(({"pair": k, "idle_us": v[0], "count": v[1]} for k, v in pairs.items()),
                     key=lambda r: -r["idle_us"])
    return {"span_us": spans[-1][1] - spans[0][0] if spans else 0.0, "idle_us": idle,
            "kernels": len(spans), "by_pair": by_pair[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="qwen3-0.6b")
    parser.add_argument("--tokens", type=int, nargs="+", default=[256])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runner, _ = build_runner(args.model, max(args.tokens), True, "eager", "cuda")
    result: dict = {"model": args.model, "device": torch.cuda.get_device_name(), "cases": []}
    for n in args.tokens:
        timed = time_prefill(runner, n, warmup=5, repeat=20)
        # random ids as time_prefill's: one id repeated draws less power, and at >= 256 tokens
        # (power capped) runs visibly faster (timing_diag.py)
        with prefill_batch(runner, n) as batch, torch.inference_mode():
            kernels = kernel_profile(lambda b=batch: runner.forward(b), 10)
            gaps = device_gaps(lambda b=batch: runner.forward(b))
        total = sum(k["us_per_step"] for k in kernels)
        case = {"tokens": n, "device_ms": timed["ms"], "host_ms": timed["host_ms"],
                "path": timed["path"], "kernel_sum_us": total, "gaps": gaps, "kernels": kernels}
        result["cases"].append(case)
        print(f"{args.model} N={n}: device {timed['ms']['median']:.3f} ms, host "
              f"{timed['host_ms']['median']:.3f} ms, kernels sum {total:.1f} us", flush=True)
        print(f"  one forward: span {gaps['span_us']:.1f} us, idle {gaps['idle_us']:.1f} us "
              f"between {gaps['kernels']} kernels; largest idle by (before, after):", flush=True)
        for g in gaps["by_pair"][:8]:
            print(f"    {g['idle_us']:8.1f} us over {g['count']:4d}  {g['pair']}", flush=True)
        print_kernel_table(kernels, 25)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
