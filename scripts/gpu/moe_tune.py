"""Tune the grouped fused-MoE kernels' block sizes for one expert shape and write the table
tessera reads (tessera/ops/triton/configs/fused_moe_E{E}_N{N}.json, see
tessera.ops.triton.moe_config): for each token count, every candidate MoEKernelConfig is timed
replayed from a CUDA graph (scripts/gpu/moe_bench.py's graphed_ms), checked against the torch
reference, and the fastest correct one kept. Token counts whose pairs take the small-batch path
(tessera.ops.triton.fused_moe_small) are not tuned here. The table is rewritten after each token
count (a run cut short keeps what it finished); copy it into tessera/ops/triton/configs/.

    PYTHONPATH=. python3 scripts/gpu/moe_tune.py --shape qwen3-30b-a3b --out-dir OUT
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import time

import torch
from moe_bench import SHAPES, graphed_ms  # scripts/gpu is the script's directory

from tessera.ops.moe import fused_moe_torch
from tessera.ops.triton.fused_moe import fused_moe
from tessera.ops.triton.fused_moe_small import SMALL_BATCH_MAX_PAIRS
from tessera.ops.triton.moe_config import MoEKernelConfig, get_moe_config

TOKENS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
GRID = {"block_m": (16, 32, 64, 128), "block_n": (32, 64, 128), "block_k": (64, 128),
        "num_warps": (4, 8), "num_stages": (3, 4)}


def candidates(rows_per_expert: float) -> list[MoEKernelConfig]:
    """The grid, less blocks of more rows than four times the experts' average (all padding)."""
    out = []
    for values in itertools.product(*GRID.values()):
        cfg = MoEKernelConfig(**dict(zip(GRID, values)))
        if cfg.block_m <= max(16, 4 * rows_per_expert):
            out.append(cfg)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=sorted(SHAPES), required=True)
    parser.add_argument("--tokens", type=int, nargs="+", default=list(TOKENS))
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--tol", type=float, default=2e-2, help="largest relative error kept")
    args = parser.parse_args()
    experts, top_k, hidden, inter = SHAPES[args.shape]
    path = os.path.join(args.out_dir, f"fused_moe_E{experts}_N{inter}.json")
    d = {"device": "cuda", "dtype": torch.bfloat16}
    gen = torch.Generator(device="cuda").manual_seed(0)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=gen, **d) * 0.02
    w2 = torch.randn(experts, hidden, inter, generator=gen, **d) * 0.02
    table, report, start = {}, [], time.monotonic()
    for tokens in args.tokens:
        if tokens * top_k <= SMALL_BATCH_MAX_PAIRS:
            print(f"T={tokens}: the small-batch path's, skipped", flush=True)
            continue
        x = torch.randn(tokens, hidden, generator=gen, **d)
        scores = torch.randn(tokens, experts, generator=gen, device="cuda").softmax(-1)
        weights, ids = scores.topk(top_k)
        ref = fused_moe_torch(x, w13, w2, weights, ids).float()
        shipped = get_moe_config(tokens, experts, inter, hidden, top_k)
        timings = []
        for cfg in candidates(tokens * top_k / experts):
            fn = functools.partial(fused_moe, x, w13, w2, weights, ids, config=cfg)
            try:
                err = float((fn().float() - ref).norm() / ref.norm())
                ms = graphed_ms(fn) if err <= args.tol else float("inf")
            except Exception as e:  # noqa: BLE001  (out of resources etc.: not a candidate)
                print(f"T={tokens} {cfg}: {type(e).__name__}", flush=True)
                continue
            timings.append((ms, cfg))
        best_ms, best = min(timings, key=lambda t: t[0])
        shipped_ms = next((ms for ms, cfg in timings if cfg == shipped), None)
        table[str(tokens)] = dataclass_dict(best)
        report.append({"tokens": tokens, "best_ms": best_ms, "best": dataclass_dict(best),
                       "shipped_ms": shipped_ms, "shipped": dataclass_dict(shipped),
                       "candidates": len(timings)})
        print(f"T={tokens}: best {best_ms * 1e3:.1f} us {best}; shipped "
              f"{'-' if shipped_ms is None else f'{shipped_ms * 1e3:.1f} us'} "
              f"({len(timings)} candidates, {time.monotonic() - start:.0f} s)", flush=True)
        with open(path, "w") as f:
            json.dump(table, f, indent=1)
        with open(os.path.join(args.out_dir, f"moe_tune_{args.shape}.json"), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "shape": args.shape,
                       "rows": report}, f, indent=1)


def dataclass_dict(cfg: MoEKernelConfig) -> dict[str, int]:
    return {name: getattr(cfg, name) for name in GRID}


if __name__ == "__main__":
    main()
