"""A/B: whole-forward extend graphs against the pieces, one runner, interleaved (GPU).

One runner per model (PCG with its whole-forward graphs captured); the pieces are chosen by
setting `PiecewiseGraphRunner.max_full_requests` to 0. Per round and token count, each way is
timed as bench_pcg does (`time_prefill`: synchronize, events around ModelRunner.forward, from an
idle device), queued behind a ~2 ms GPU sleep (device time alone), and as `tessera bench
latency`'s prefill step (TesseraLatency.run, output length 1); the host time of the forward call
is reported too. Order alternates every round.

    python benchmarks/prefill_opt/ab_full_graph.py --case llama3-8b:16,256,1024 \\
        --case qwen3-0.6b:16,256 --out ab_full_graph.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from benchmarks.prefill_opt.full_graph import device_ms
from tessera.bench.pcg import (
    build_runner,
    free_memory,
    parse_case,
    prefill_batch,
    time_prefill,
)


def behind_sleep(runner: Any, n: int) -> float:
    """Median device ms of the forward queued behind a GPU sleep (host launch work hidden)."""
    with prefill_batch(runner, n) as batch:
        return device_ms(lambda: runner.forward(batch), behind_sleep=True, reps=10, warmup=2)


def host_replay_us(pcg: Any, size: int, reps: int = 20) -> float:
    """Host us of launching the whole-forward graph of `size` alone."""
    graph = pcg.full_graphs[size][0]
    samples = []
    for _ in range(reps):
        torch.cuda.synchronize()
        start = time.perf_counter()
        graph.replay()
        samples.append((time.perf_counter() - start) * 1e6)
    torch.cuda.synchronize()
    return statistics.median(samples)


def main() -> None:
    from tessera.bench.latency import TesseraLatency

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=parse_case, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "models": []}
    for model, sizes in args.case:
        runner, _ = build_runner(model, max(sizes), True, "eager", "cuda")
        (pcg,) = [r for r in runner.graph_runners if type(r).__name__ == "PiecewiseGraphRunner"]
        full_requests = pcg.max_full_requests
        bench = TesseraLatency(runner)
        vocab = runner.model_config.vocab_size
        rows = []
        for n in sizes:
            prompt = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n))
            runs: dict[str, dict[str, list[float]]] = {"full": {}, "pieces": {}}
            for r in range(args.rounds):
                for way in (("full", "pieces") if r % 2 == 0 else ("pieces", "full")):
                    pcg.max_full_requests = full_requests if way == "full" else 0
                    rec = runs[way]
                    with torch.inference_mode():
                        timed = time_prefill(runner, n, warmup=3, repeat=15)
                        rec.setdefault("idle_ms", []).append(timed["ms"]["median"])
                        rec.setdefault("host_ms", []).append(timed["host_ms"]["median"])
                        rec.setdefault("behind_sleep_ms", []).append(behind_sleep(runner, n))
                        steps = [bench.run([prompt.tolist()], 1).prefill_ms for _ in range(8)]
                        rec.setdefault("step_ms", []).append(statistics.median(steps[2:]))
            pcg.max_full_requests = full_requests
            row = {"tokens": n, "graph_launch_host_us": host_replay_us(pcg, pcg.padded_size(n)),
                   **{way: {k: round(statistics.median(v), 4) for k, v in rec.items()}
                      for way, rec in runs.items()}}
            print(model, json.dumps(row), flush=True)
            rows.append(row)
        result["models"].append({"model": model, "rows": rows})
        platform = runner.platform
        del runner, pcg, bench
        free_memory(platform)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
