"""A/B: the last layer's MLP on each request's last token only, or on every token (GPU).

A prefill needs the final hidden state of each request's last token only, and after the last
layer's attention no token depends on another: LlamaModel.finish runs that layer's MLP and the
final norm on the chosen rows. Two runners, built first and timed interleaved (order reversed
every other round): one as shipped (whole-forward graphs of >= FINISH_LAST_TOKENS_FROM tokens
finish the last tokens only), one whose whole-forward graphs finish every token and then take
the last tokens' rows (the threshold patched out while it captures). Same trunk, same kernels
otherwise. Timed as ab_full_requests.py: device events around ModelRunner.forward from an idle
device, one request of N new tokens.

    python benchmarks/prefill_opt/ab_finish.py --model llama3-8b --tokens 16 64 128 256 1024 \\
        --out ab_finish.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from typing import Any
from unittest import mock

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from benchmarks.prefill_opt.ab_full_requests import build, timed_forward
from tessera.bench.pcg import free_memory
from tessera.runner import piecewise_graph_runner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--tokens", type=int, nargs="+", default=[16, 64, 128, 256, 1024])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    max_tokens = max(args.tokens)
    runners = {"last_tokens": build(args.model, max_tokens, 4)}
    with mock.patch.object(piecewise_graph_runner, "FINISH_LAST_TOKENS_FROM", 1 << 30):
        runners["every_token"] = build(args.model, max_tokens, 4)
    names = list(runners)
    result: dict[str, Any] = {"model": args.model, "device": torch.cuda.get_device_name(),
                              "cases": []}
    with torch.inference_mode():
        for n in args.tokens:
            times: dict[str, list[float]] = {name: [] for name in names}
            for r in range(args.rounds):
                for name in (names if r % 2 == 0 else names[::-1]):
                    times[name].append(timed_forward(runners[name], [n], [0]))
            row = {"tokens": n, **{name: round(statistics.median(t), 4)
                                   for name, t in times.items()}}
            print(json.dumps(row), flush=True)
            result["cases"].append(row)
    platform = runners["last_tokens"].platform
    del runners
    free_memory(platform)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
