"""Experiment (session 12): what the split at attention costs a short prefill on the device (GPU).

One request of N new tokens three ways on one runner (bf16, dummy weights, real shapes):
  piecewise   ModelRunner.forward through the PiecewiseGraphRunner (what serving runs);
  full        the same forward (backbone + last-token logits) captured whole as ONE CUDA graph
              for this batch (attention inside, its metadata frozen), as decode graphs are;
  full_nopdl  the same with programmatic dependent launch off while capturing.
Each is timed from an idle device (synchronize, event, the call, event: what bench_pcg reports)
and queued behind a ~2 ms GPU sleep (the device's time alone, the host's launch work hidden).
The logits of the three are compared.

    python benchmarks/prefill_opt/full_graph.py --model llama3-8b --tokens 16 64 256 --out f.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from tessera.forward.context import set_forward_context
from tessera.bench.pcg import build_runner, prefill_batch
from tessera.ops.triton import pdl


def device_ms(fn, behind_sleep: bool = False, reps: int = 15, warmup: int = 3) -> float:
    """Median device ms of `fn()` between two events, each call from an idle device (synchronize
    first: what bench_pcg reports, the host's launch work included) or queued behind a ~2 ms GPU
    sleep (the device's time alone). The ab_full_* scripts time with this too."""
    samples = []
    for i in range(reps + warmup):
        torch.cuda.synchronize()
        if behind_sleep:
            torch.cuda._sleep(4_000_000)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        if i >= warmup:
            samples.append(a.elapsed_time(b))
    return statistics.median(samples)


def capture_full(runner: Any, batch: Any, use_pdl: bool) -> tuple[torch.cuda.CUDAGraph, Any, Any]:
    """The eager forward of `batch` (backbone + last-token logits) captured as one graph, its
    logits, and the attention metadata it reads (kept alive with the graph)."""
    backend = runner.attn_backend
    was = pdl.enabled()
    pdl.set_enabled(use_pdl)
    try:
        def forward():
            backend.init_forward_metadata(batch)
            with set_forward_context(batch, backend):
                hidden = runner.model(batch.input_ids, batch.positions)
            return runner.compute_logits(hidden, batch).next_token_logits

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        # metadata built outside the capture (host work + one copy), read by the captured kernels
        backend.init_forward_metadata(batch)
        with torch.cuda.graph(graph):
            with set_forward_context(batch, backend):
                hidden = runner.model(batch.input_ids, batch.positions)
            logits = runner.compute_logits(hidden, batch).next_token_logits
        return graph, logits, backend._metadata
    finally:
        pdl.set_enabled(was)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16])
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runner, _ = build_runner(args.model, max(args.tokens), True, "eager", "cuda")
    result: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name(),
                              "cases": []}
    for n in args.tokens:
        with prefill_batch(runner, n) as batch, torch.inference_mode():
            piecewise = lambda b=batch: runner.forward(b).next_token_logits
            ref = piecewise().float().clone()
            graphs = {name: capture_full(runner, batch, flag)
                      for name, flag in (("full", True), ("full_nopdl", False))}
            case: dict[str, Any] = {"tokens": n, "idle_ms": {}, "behind_sleep_ms": {},
                                    "max_abs_logit_diff": {}}
            calls = {"piecewise": piecewise, **{k: g.replay for k, (g, _, _) in graphs.items()}}
            for _ in range(2):  # two passes, interleaved
                for name, fn in calls.items():
                    case["idle_ms"].setdefault(name, []).append(round(device_ms(fn), 4))
                    case["behind_sleep_ms"].setdefault(name, []).append(round(device_ms(fn, True), 4))
            for name, (graph, logits, _) in graphs.items():
                graph.replay()
                torch.cuda.synchronize()
                case["max_abs_logit_diff"][name] = (logits.float() - ref).abs().max().item()
            del graphs
        for key in ("idle_ms", "behind_sleep_ms"):
            case[key] = {k: min(v) for k, v in case[key].items()}
        print(json.dumps(case), flush=True)
        result["cases"].append(case)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
