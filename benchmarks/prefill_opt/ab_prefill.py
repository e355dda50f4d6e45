"""A/B of kernel and launch-order choices of the piecewise-graph prefill (GPU).

  early start   `PiecewiseGraphRunner` launches the first graph piece before it works out the
                padded batch and the attention metadata (`ReplayPlan.start`); off: plan.lead = 0,
                the order before (everything after the metadata)
  extend PDL    the extend attention kernel launched as a programmatic dependent
                (tessera.ops.triton.pdl); off: `use_pdl` patched to False while the runner
                is built (the other Triton kernels keep PDL)

  stream GEMM   (--stream-gemm, instead of the two above) few-row linear layers on
                tessera.ops.triton.stream_gemm (the default) against cuBLAS
                (tessera.ops.linear's MAX_STREAM_ROWS and MAX_NARROW_STREAM_ROWS patched to 0
                while the runner captures)

For each model one runner per PDL setting, both built first; per token count the four variants
timed once a round, `--rounds` rounds, the order reversed every other round. Timing as bench_pcg
(`time_prefill`: random prompt ids, synchronize, events around ModelRunner.forward) and back to
back (`--repeat` forwards between two events).

    python benchmarks/prefill_opt/ab_prefill.py --case llama3-8b:16,256,1024 \\
        --case qwen3-0.6b:256 --out ab.json
    python benchmarks/prefill_opt/ab_prefill.py --stream-gemm --case llama3-8b:16 --out ab.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tessera.compilation.bench_pcg import (
    build_runner,
    free_memory,
    parse_case,
    prefill_batch,
    summarize,
    time_prefill,
)


def back_to_back(runner: Any, n: int, repeat: int) -> float:
    """ms per forward of `repeat` forwards between two events (random prompt ids)."""
    with prefill_batch(runner, n) as batch:
        for _ in range(3):
            runner.forward(batch)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(repeat):
            runner.forward(batch)
        end.record()
        torch.cuda.synchronize()
    return start.elapsed_time(end) / repeat


def set_lead(runner: Any, early: bool) -> None:
    (pcg,) = [r for r in runner.graph_runners if type(r).__name__ == "PiecewiseGraphRunner"]
    for plan in pcg.plans.values():
        plan.lead = plan.lead_recorded if early else 0


def stream_gemm_ab(args: argparse.Namespace) -> None:
    """Runners with and without the stream GEMM, built first, timed interleaved."""
    linear = importlib.import_module("tessera.ops.linear")
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "models": []}
    for model, sizes in args.case:
        entry: dict[str, Any] = {"model": model, "variants": []}
        runners = {}
        with torch.inference_mode():
            for stream in (True, False):
                rows = linear.MAX_STREAM_ROWS if stream else 0
                narrow = linear.MAX_NARROW_STREAM_ROWS if stream else 0
                with mock.patch.object(linear, "MAX_STREAM_ROWS", rows), \
                        mock.patch.object(linear, "MAX_NARROW_STREAM_ROWS", narrow):
                    runners[stream], _ = build_runner(model, max(sizes), True, "eager", "cuda")
            for n in sizes:
                runs: dict[bool, dict[str, list[float]]] = {
                    v: {"sync": [], "b2b": []} for v in (True, False)}
                for r in range(args.rounds):
                    for stream in ((True, False) if r % 2 == 0 else (False, True)):
                        timed = time_prefill(runners[stream], n, warmup=3, repeat=args.repeat)
                        runs[stream]["sync"].append(timed["ms"]["median"])
                        runs[stream]["b2b"].append(back_to_back(runners[stream], n, args.repeat))
                for stream in (True, False):
                    row = {"tokens": n, "stream_gemm": stream,
                           "sync_ms": summarize(runs[stream]["sync"]),
                           "b2b_ms": summarize(runs[stream]["b2b"])}
                    entry["variants"].append(row)
                    print(f"{model} N={n} stream_gemm={stream!s:5}: sync "
                          f"{row['sync_ms']['median']:.3f} ms (min {row['sync_ms']['min']:.3f}),"
                          f" b2b {row['b2b_ms']['median']:.3f} ms", flush=True)
        platform = runners[True].platform
        del runners
        free_memory(platform)
        result["models"].append(entry)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=parse_case, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--stream-gemm", action="store_true",
                        help="A/B the few-row stream GEMM instead of extend PDL / early start")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    if args.stream_gemm:
        stream_gemm_ab(args)
        return
    # the module (the package re-exports its function of the same name)
    extend_attention = importlib.import_module("tessera.attention.triton_ops.extend_attention")

    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "models": []}
    for model, sizes in args.case:
        entry: dict[str, Any] = {"model": model, "variants": []}
        runners = {}
        with torch.inference_mode():
            for extend_pdl in (True, False):  # both built first, then timed interleaved
                wanted = extend_attention.use_pdl if extend_pdl else (lambda device: False)
                with mock.patch.object(extend_attention, "use_pdl", wanted):
                    runner, _ = build_runner(model, max(sizes), True, "eager", "cuda")
                (pcg,) = [r for r in runner.graph_runners
                          if type(r).__name__ == "PiecewiseGraphRunner"]
                for plan in pcg.plans.values():
                    plan.lead_recorded = plan.lead
                runners[extend_pdl] = runner
            for n in sizes:
                variants = [(pdl, early) for pdl in (True, False) for early in (True, False)]
                runs: dict[tuple, dict[str, list[float]]] = {
                    v: {"sync": [], "b2b": []} for v in variants}
                for r in range(args.rounds):
                    # every variant once a round, the order reversed every other round
                    for pdl, early in (variants if r % 2 == 0 else variants[::-1]):
                        runner = runners[pdl]
                        set_lead(runner, early)
                        timed = time_prefill(runner, n, warmup=3, repeat=args.repeat)
                        runs[pdl, early]["sync"].append(timed["ms"]["median"])
                        runs[pdl, early]["b2b"].append(back_to_back(runner, n, args.repeat))
                for pdl, early in variants:
                    row = {"tokens": n, "extend_pdl": pdl, "early_start": early,
                           "sync_ms": summarize(runs[pdl, early]["sync"]),
                           "b2b_ms": summarize(runs[pdl, early]["b2b"])}
                    entry["variants"].append(row)
                    print(f"{model} N={n} extend_pdl={pdl!s:5} early_start={early!s:5}: sync "
                          f"{row['sync_ms']['median']:.3f} ms (min {row['sync_ms']['min']:.3f}),"
                          f" b2b {row['b2b_ms']['median']:.3f} ms", flush=True)
        platform = runners[True].platform
        del runner, pcg, runners
        free_memory(platform)
        result["models"].append(entry)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
