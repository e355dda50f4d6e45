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

For each model every runner is built first (one per PDL setting, or per stream-GEMM setting);
per token count every variant is timed once a round, `--rounds` rounds, the order reversed every
other round. Timing as bench_pcg
(`time_prefill`: random prompt ids, synchronize, events around ModelRunner.forward) and back to
back (`--repeat` forwards between two events).

    python benchmarks/prefill_opt/ab_prefill.py --case llama3-8b:16,256,1024 \\
        --case qwen3-0.6b:256 --out ab.json
    python benchmarks/prefill_opt/ab_prefill.py --stream-gemm --case llama3-8b:16 --out ab.json
"""
from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tessera.bench.pcg import (
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


# a variant: (its labels in the results, its runner, what to set before it is timed)
Variant = tuple[dict[str, Any], Any, Callable[[], None]]


def pdl_and_early_start(model: str, max_tokens: int) -> list[Variant]:
    """Extend PDL on / off (one runner each, built first) x early start on / off (set_lead)."""
    # the module (the package re-exports its function of the same name)
    extend_attention = importlib.import_module("tessera.attention.triton_ops.extend_attention")
    runners = {}
    for extend_pdl in (True, False):
        wanted = extend_attention.use_pdl if extend_pdl else (lambda device: False)
        with mock.patch.object(extend_attention, "use_pdl", wanted):
            runner, _ = build_runner(model, max_tokens, True, "eager", "cuda")
        (pcg,) = [r for r in runner.graph_runners if type(r).__name__ == "PiecewiseGraphRunner"]
        for plan in pcg.plans.values():
            plan.lead_recorded = plan.lead
        runners[extend_pdl] = runner
    return [({"extend_pdl": pdl, "early_start": early}, runners[pdl],
             functools.partial(set_lead, runners[pdl], early))
            for pdl in (True, False) for early in (True, False)]


def stream_gemm_on_off(model: str, max_tokens: int) -> list[Variant]:
    """Runners with and without the stream GEMM (its row limits patched to 0 while capturing)."""
    linear = importlib.import_module("tessera.ops.linear")
    variants = []
    for stream in (True, False):
        rows = linear.MAX_STREAM_ROWS if stream else 0
        narrow = linear.MAX_NARROW_STREAM_ROWS if stream else 0
        with mock.patch.object(linear, "MAX_STREAM_ROWS", rows), \
                mock.patch.object(linear, "MAX_NARROW_STREAM_ROWS", narrow):
            runner, _ = build_runner(model, max_tokens, True, "eager", "cuda")
        variants.append(({"stream_gemm": stream}, runner, lambda: None))
    return variants


def interleaved(model: str, n: int, variants: list[Variant], rounds: int,
                repeat: int) -> list[dict[str, Any]]:
    """Every variant timed once a round at n tokens, the order reversed every other round."""
    runs = [{"sync": [], "b2b": []} for _ in variants]
    order = list(range(len(variants)))
    for r in range(rounds):
        for i in (order if r % 2 == 0 else order[::-1]):
            _, runner, setup = variants[i]
            setup()
            runs[i]["sync"].append(time_prefill(runner, n, warmup=3, repeat=repeat)["ms"]["median"])
            runs[i]["b2b"].append(back_to_back(runner, n, repeat))
    rows = []
    for (labels, _, _), run in zip(variants, runs):
        row = {"tokens": n, **labels, "sync_ms": summarize(run["sync"]),
               "b2b_ms": summarize(run["b2b"])}
        rows.append(row)
        print(f"{model} N={n} " + " ".join(f"{k}={v!s:5}" for k, v in labels.items())
              + f": sync {row['sync_ms']['median']:.3f} ms (min {row['sync_ms']['min']:.3f}),"
              f" b2b {row['b2b_ms']['median']:.3f} ms", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=parse_case, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--stream-gemm", action="store_true",
                        help="A/B the few-row stream GEMM instead of extend PDL / early start")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    build = stream_gemm_on_off if args.stream_gemm else pdl_and_early_start

    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "models": []}
    for model, sizes in args.case:
        with torch.inference_mode():
            variants = build(model, max(sizes))  # every runner built before any timing
            rows = [row for n in sizes
                    for row in interleaved(model, n, variants, args.rounds, args.repeat)]
        platform = variants[0][1].platform
        del variants
        free_memory(platform)
        result["models"].append({"model": model, "variants": rows})
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
