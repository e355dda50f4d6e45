"""A/B: how many request slots the whole-forward extend graphs should have (GPU).

One runner per `--piecewise-cuda-graph-max-requests` value (built first, timed interleaved, the
order reversed every other round). Each extend kernel launch of a whole-forward graph has a grid
over every request slot (spare slots' programs exit at once), so more slots cost something on
every batch; in exchange batches of more requests (e.g. a prefill chunk mixed with decoding
requests) replay the whole-forward graph instead of the pieces. Timed as bench_pcg's
`time_prefill` (events around ModelRunner.forward from an idle device): one request of N new
tokens, and a mixed batch of `--mixed` requests (one decoding token each on a 64-token prefix,
plus one new prompt making up N tokens).

    python benchmarks/prefill_opt/ab_full_requests.py --model llama3-8b --tokens 16 256 1024 \\
        --slots 4 16 --mixed 9 --out ab_full_requests.json
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

from benchmarks.prefill_opt.full_graph import device_ms
from tessera.bench.pcg import free_memory


def build(model: str, max_tokens: int, slots: int):
    from tessera.config import EngineConfig
    from tessera.runner.model_runner import ModelRunner

    config = EngineConfig.from_kwargs(
        model_path=model, device="cuda", dtype="bfloat16", load_format="dummy",
        kv_cache_tokens=max(max_tokens, 4096) * 2, max_running_requests=32,
        disable_cuda_graph=True, piecewise_cuda_graph_max_tokens=max(max_tokens, 2048),
        piecewise_cuda_graph_max_requests=slots)
    return ModelRunner(config)


def batch_of(runner: Any, lens: list[int], prefixes: list[int]):
    """An EXTEND batch: request i has prefixes[i] cached tokens (their slots allocated and
    recorded, contents whatever the pool holds) and lens[i] new ones."""
    from tessera.forward.batch import ForwardBatch, ForwardMode

    gen = torch.Generator().manual_seed(sum(lens))
    rows, all_slots, new_slots = [], [], []
    for p, n in zip(prefixes, lens):
        row = runner.req_to_token_pool.alloc()
        slots = runner.allocator.alloc(p + n)
        runner.req_to_token_pool.write(row, 0, slots)
        rows.append(row)
        all_slots.append(slots)
        new_slots.append(slots[p:])
    ids = torch.randint(0, runner.model_config.vocab_size, (sum(lens),), generator=gen).tolist()
    batch = ForwardBatch.build(ForwardMode.EXTEND, ids, rows, prefixes, lens,
                               torch.cat(new_slots), runner.device)
    return batch, rows, all_slots


def timed_forward(runner: Any, lens: list[int], prefixes: list[int]) -> float:
    """device_ms of ModelRunner.forward on batch_of(runner, lens, prefixes), whose rows and
    slots are freed afterwards."""
    batch, rows, slots = batch_of(runner, lens, prefixes)
    ms = device_ms(lambda: runner.forward(batch))
    for row, used in zip(rows, slots):
        runner.allocator.free(used)
        runner.req_to_token_pool.free(row)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 256, 1024])
    parser.add_argument("--slots", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--mixed", type=int, default=9)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    runners = {s: build(args.model, max(args.tokens), s) for s in args.slots}
    cases = {}
    for n in args.tokens:
        cases[f"1 request, {n} tokens"] = ([n], [0])
        decoding = args.mixed - 1
        if n > decoding:
            cases[f"{args.mixed} requests, {n} tokens"] = ([1] * decoding + [n - decoding],
                                                          [64] * decoding + [0])
    result: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name(),
                              "cases": []}
    with torch.inference_mode():
        for name, (lens, prefixes) in cases.items():
            times: dict[int, list[float]] = {s: [] for s in runners}
            paths = {}
            for r in range(args.rounds):
                for s in (args.slots if r % 2 == 0 else args.slots[::-1]):
                    runner = runners[s]
                    (pcg,) = [g for g in runner.graph_runners
                              if type(g).__name__ == "PiecewiseGraphRunner"]
                    full = pcg.full_replays
                    times[s].append(timed_forward(runner, lens, prefixes))
                    paths[s] = "whole-forward" if pcg.full_replays > full else "pieces"
            row = {"case": name, **{f"slots_{s}": {"ms": round(statistics.median(t), 4),
                                                   "path": paths[s]}
                                    for s, t in times.items()}}
            print(json.dumps(row), flush=True)
            result["cases"].append(row)
    platform = next(iter(runners.values())).platform
    del runners
    free_memory(platform)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
