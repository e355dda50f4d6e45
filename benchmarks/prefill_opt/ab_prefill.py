"""A/B of two host/launch-order choices of the piecewise-graph prefill (GPU).

  early start   `PiecewiseGraphRunner` launches the first graph piece before it works out the
                padded batch and the attention metadata (`ReplayPlan.start`); off: plan.lead = 0,
                the order before (everything after the metadata)
  extend PDL    the extend attention kernel launched as a programmatic dependent
                (tessera.ops.triton.pdl); off: `use_pdl` patched to False while the runner
                is built (the other Triton kernels keep PDL)

For each model one runner per PDL setting; on it, per token count, the two start orders
interleaved `--rounds` times. Timing as bench_pcg (`time_prefill`: random prompt ids, synchronize,
events around ModelRunner.forward) and back to back (`--repeat` forwards between two events).

    python benchmarks/prefill_opt/ab_prefill.py --case llama3-8b:16,256,1024 \\
        --case qwen3-0.6b:256 --out ab.json
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=parse_case, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # the module (the package re-exports its function of the same name)
    extend_attention = importlib.import_module("tessera.attention.triton_ops.extend_attention")

    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "models": []}
    for model, sizes in args.case:
        entry: dict[str, Any] = {"model": model, "variants": []}
        for extend_pdl in (True, False):
            patch = (mock.patch.object(extend_attention, "use_pdl", lambda device: False)
                     if not extend_pdl else mock.patch.object(extend_attention, "use_pdl",
                                                              extend_attention.use_pdl))
            with patch, torch.inference_mode():
                runner, _ = build_runner(model, max(sizes), True, "eager", "cuda")
                (pcg,) = [r for r in runner.graph_runners
                          if type(r).__name__ == "PiecewiseGraphRunner"]
                for plan in pcg.plans.values():
                    plan.lead_recorded = plan.lead
                for n in sizes:
                    runs: dict[bool, dict[str, list[float]]] = {
                        e: {"sync": [], "b2b": []} for e in (True, False)}
                    for _ in range(args.rounds):
                        for early in (True, False):
                            set_lead(runner, early)
                            timed = time_prefill(runner, n, warmup=3, repeat=args.repeat)
                            runs[early]["sync"].append(timed["ms"]["median"])
                            runs[early]["b2b"].append(back_to_back(runner, n, args.repeat))
                    for early in (True, False):
                        row = {"tokens": n, "extend_pdl": extend_pdl, "early_start": early,
                               "sync_ms": summarize(runs[early]["sync"]),
                               "b2b_ms": summarize(runs[early]["b2b"])}
                        entry["variants"].append(row)
                        print(f"{model} N={n} extend_pdl={extend_pdl!s:5} "
                              f"early_start={early!s:5}: sync {row['sync_ms']['median']:.3f} ms"
                              f" (min {row['sync_ms']['min']:.3f}), b2b "
                              f"{row['b2b_ms']['median']:.3f} ms", flush=True)
                platform = runner.platform
                del runner, pcg
                free_memory(platform)
        result["models"].append(entry)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
