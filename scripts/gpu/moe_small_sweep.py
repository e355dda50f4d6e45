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

# (tile_acc, block_n, block_k, num_warps): per-step reductions over wider row blocks, or the
# dense GEMV's scheme (tessera.ops.triton.gemv: a [block_n, block_k] tile reduced once, few rows
# per program so many programs stream at once)
CONFIGS = ([(False, n, k, 4) for n in (16, 32, 64) for k in (128, 256)]
           + [(True, n, k, w) for n in (4, 8, 16) for k in (256, 512) for w in (4, 8)])


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
        for tile_acc, block_n, block_k, warps in CONFIGS:
            fn = functools.partial(fused_moe_small_batch, x, w13, w2, weights, ids,
                                   block_n=block_n, block_k=block_k, num_warps=warps,
                                   tile_acc=tile_acc)
            row = {"shape": name, "tokens": tokens, "tile_acc": tile_acc, "block_n": block_n,
                   "block_k": block_k, "num_warps": warps}
            label = f"{name} T={tokens} tile={int(tile_acc)} N={block_n} K={block_k} w={warps}"
            try:
                err = float((fn().float() - ref).norm() / ref.norm())
                ms = graphed_ms(fn)
            except Exception as e:  # noqa: BLE001  (a config that does not compile is a result)
                row["error"] = f"{type(e).__name__}: {e}"[:300]
                print(f"{label}: {row['error']}", flush=True)
            else:
                row.update(graph_ms=ms, rel_err=err, floor_fraction=moved / rate / (ms * 1e-3))
                print(f"{label}: {ms * 1e3:.1f} us, {row['floor_fraction']:.0%} of the copy "
                      f"floor, rel err {err:.1e} ({time.monotonic() - start:.0f} s)", flush=True)
            report["rows"].append(row)
            with open(args.out, "w") as f:
                json.dump(report, f, indent=1)
    print("best per shape and token count:")
    timed = (r for r in report["rows"] if "graph_ms" in r)
    for (name, tokens), rows in itertools.groupby(timed, key=lambda r: (r["shape"], r["tokens"])):
        rows = sorted(rows, key=lambda r: r["graph_ms"])
        for r in rows[:3]:
            print(f"  {name} T={tokens}: {r['graph_ms'] * 1e3:.1f} us, "
                  f"{r['floor_fraction']:.0%} of the floor: tile={int(r['tile_acc'])} "
                  f"N={r['block_n']} K={r['block_k']} w={r['num_warps']}")


if __name__ == "__main__":
    main()
