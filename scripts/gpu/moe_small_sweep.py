"""Block sizes of the small-batch fused MoE path (tessera.ops.triton.fused_moe_small) at decode
sizes: each (BLOCK_N, BLOCK_K, num_warps) replayed from a CUDA graph at qwen3-30b-a3b and
deepseek-v2-lite expert shapes, bf16, with its fraction of the copy-bandwidth floor (the same
measure as scripts/gpu/moe_bench.py). Writes a JSON row per timing as it goes (a run cut short
keeps what it measured).

    PYTHONPATH=. python3 scripts/gpu/moe_small_sweep.py --out sweep.json [--tokens 1 4]
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import time

import torch
from moe_bench import SHAPES, copy_rate, graphed_ms  # scripts/gpu is the script's directory

from tessera.ops.moe import fused_moe_torch
from tessera.ops.triton.fused_moe_small import fused_moe_small_batch

BLOCK_N = (16, 32, 64)
BLOCK_K = (128, 256, 512)
WARPS = (4, 8)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 4])
    args = parser.parse_args()
    start = time.monotonic()
    rate = copy_rate()
    report = {"device": torch.cuda.get_device_name(), "copy_bytes_per_s": rate, "rows": []}
    for tokens, (name, (experts, top_k, hidden, inter)) in itertools.product(
            args.tokens, SHAPES.items()):
        d = {"device": "cuda", "dtype": torch.bfloat16}
        gen = torch.Generator(device="cuda").manual_seed(tokens)
        w13 = torch.randn(experts, 2 * inter, hidden, generator=gen, **d) * 0.02
        w2 = torch.randn(experts, hidden, inter, generator=gen, **d) * 0.02
        x = torch.randn(tokens, hidden, generator=gen, **d)
        scores = torch.randn(tokens, experts, generator=gen, device="cuda").softmax(-1)
        weights, ids = scores.topk(top_k)
        ref = fused_moe_torch(x, w13, w2, weights, ids).float()
        moved = int(ids.unique().numel()) * 3 * inter * hidden * 2
        for block_n, block_k, warps in itertools.product(BLOCK_N, BLOCK_K, WARPS):
            fn = functools.partial(fused_moe_small_batch, x, w13, w2, weights, ids,
                                   block_n=block_n, block_k=block_k, num_warps=warps)
            err = float((fn().float() - ref).norm() / ref.norm())
            ms = graphed_ms(fn)
            row = {"shape": name, "tokens": tokens, "block_n": block_n, "block_k": block_k,
                   "num_warps": warps, "graph_ms": ms, "rel_err": err,
                   "floor_fraction": moved / rate / (ms * 1e-3)}
            report["rows"].append(row)
            print(f"{name} T={tokens} N={block_n} K={block_k} w={warps}: {ms * 1e3:.1f} us, "
                  f"{row['floor_fraction']:.0%} of the copy floor, rel err {err:.1e} "
                  f"({time.monotonic() - start:.0f} s)", flush=True)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
