"""Extend attention kernel time by query tile size (GPU): which BLOCK_M for which grid.

One request of N new tokens (no prefix), bf16, the fused K/V store on; device time per launch
inside a replayed CUDA graph of 20 launches (as in a piecewise graph's replay: no host time in
the figure; the first version timed eager launches and hit a ~13 us host floor), median of 7
replays. Cases are the prefill shapes of the benchmarks: qwen3-0.6b (16 q heads, 8 kv heads,
d 128) and llama3-8b (32 / 8 / 128). "auto" is the tile `choose_tile` picks.

    python benchmarks/prefill_opt/extend_blocks.py [--key-tiles] --out extend_blocks.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "decode_opt"))

from profile_decode import graph_of, time_ms


def time_us(fn, calls: int = 20) -> float:
    """Per-launch device time of `fn` inside a CUDA graph of `calls` launches."""
    def many() -> None:
        for _ in range(calls):
            fn()
    return round(time_ms(graph_of(many), 3, 7)["median"] * 1e3 / calls, 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--key-tiles", action="store_true",
                        help="also sweep BLOCK_N and num_stages around the likely query tiles")
    args = parser.parse_args()
    from tessera.attention.triton_ops.extend_attention import ExtendAttention

    dev = torch.device("cuda")
    rows = []
    for model, hq, hk, d, sizes in (("qwen3-0.6b", 16, 8, 128, (16, 64, 256, 1024)),
                                    ("llama3-8b", 32, 8, 128, (16, 64, 256, 1024))):
        for n in sizes:
            k_cache = torch.zeros(n + 1, hk, d, dtype=torch.bfloat16, device=dev)
            v_cache = torch.zeros_like(k_cache)
            table = torch.arange(1, n + 1, dtype=torch.int32, device=dev).view(1, n)
            qkv = torch.randn(n, (hq + 2 * hk) * d, dtype=torch.bfloat16, device=dev)
            q = qkv[:, :hq * d].view(n, hq, d)
            k = qkv[:, hq * d:(hq + hk) * d].view(n, hk, d)
            v = qkv[:, (hq + hk) * d:].view(n, hk, d)
            out = torch.empty(n, hq, d, dtype=torch.bfloat16, device=dev)
            meta = [torch.tensor(x, dtype=dt, device=dev) for x, dt in
                    (([0], torch.int64), ([0], torch.int32), ([n], torch.int32),
                     ([0], torch.int32))]
            loc = torch.arange(1, n + 1, dtype=torch.int64, device=dev)
            row = {"model": model, "tokens": n, "us": {}}
            for block_m in (16, 32, 64, 128):
                for warps in (4, 8):
                    launch = ExtendAttention(q, k_cache, v_cache, out, table, d ** -0.5,
                                             k_new=k, v_new=v, block_m=block_m,
                                             num_warps=warps)
                    row["us"][f"m{block_m}_w{warps}"] = time_us(
                        functools.partial(launch, *meta, n, loc))
            default = ExtendAttention(q, k_cache, v_cache, out, table, d ** -0.5, k_new=k,
                                      v_new=v)
            row["us"]["auto"] = time_us(functools.partial(default, *meta, n, loc))
            row["auto_tile"] = default.tile(n)[0]
            if args.key_tiles:  # BLOCK_N and pipeline depth around the chosen query tiles
                tiles = ([(16, 8)] if n <= 64 else [(64, 8), (32, 8), (64, 4)] if n <= 256
                         else [(128, 8), (64, 4), (64, 8)])
                for block_m, warps in tiles:
                    for block_n in (32, 64, 128):
                        for stages in (2, 3, 4):
                            name = f"m{block_m}_w{warps}_n{block_n}_s{stages}"
                            try:
                                launch = ExtendAttention(
                                    q, k_cache, v_cache, out, table, d ** -0.5, k_new=k,
                                    v_new=v, block_m=block_m, block_n=block_n,
                                    num_warps=warps, num_stages=stages)
                                row["us"][name] = time_us(functools.partial(launch, *meta, n,
                                                                            loc))
                            except Exception as e:  # noqa: BLE001  (out of shared memory)
                                row.setdefault("failed", {})[name] = repr(e)[:120]
            best = min(row["us"], key=row["us"].get)
            print(model, n, "best", best, row["us"][best], json.dumps(row["us"]), flush=True)
            rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
