"""Few-row linear layers (GPU): cuBLAS against the Triton skinny GEMM (tessera/ops/triton/skinny_gemm.py).

Every linear shape of qwen3-0.6b and llama3-8b (not the LM heads: a prefill computes logits for
one row per request). First a tile-config sweep at 16 rows (a 16-token prefill), then the best
config and `skinny_config`'s choice against cuBLAS at 2..32 rows: which row counts the kernel
should take. Each figure is the median time per call inside a replayed CUDA graph of calls that
rotate over enough weight copies to defeat L2 (as consecutive layers do), PDL on as in the
engine; timing helpers from benchmarks/decode_opt/profile_decode.py.

    python benchmarks/prefill_opt/skinny_gemm.py --out skinny_gemm.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "decode_opt"))

from profile_decode import L2_BYTES, SHAPES, _over, graph_of, time_ms


def configs() -> list:
    from tessera.ops.triton.skinny_gemm import SkinnyConfig

    out = []
    for bn in (16, 32, 64, 128):
        for bk in (64, 128, 256, 512):
            for warps in ((4,) if bn <= 32 else (4, 8)):
                for stages in (3, 5):
                    if stages * (bn + 16) * bk * 2 > 200_000:
                        continue
                    out.append(SkinnyConfig(bn, bk, warps, stages))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    parser.add_argument("--rows", type=int, nargs="+", default=[2, 4, 8, 16, 24, 32])
    args = parser.parse_args()
    from tessera.ops.triton import pdl
    from tessera.ops.triton.skinny_gemm import skinny_config, skinny_gemm

    pdl.set_enabled(True)
    dev, dtype = "cuda", torch.bfloat16
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "shapes": {}}
    for model, table in SHAPES.items():
        for name, (n, k) in table.items():
            if name == "lm_head":
                continue
            nbytes = n * k * 2
            copies = max(4, min(64, -(-3 * L2_BYTES // nbytes)))
            gen = torch.Generator(device=dev).manual_seed(0)
            weights = [torch.randn(n, k, device=dev, dtype=dtype, generator=gen) * 0.02
                       for _ in range(copies)]
            xs = {m: torch.randn(m, k, device=dev, dtype=dtype, generator=gen)
                  for m in args.rows}

            per_call_us = functools.partial(_per_call_us, weights)
            x16 = xs[16] if 16 in xs else torch.randn(16, k, device=dev, dtype=dtype)
            ref = x16.double() @ weights[0].double().T
            entry: dict[str, Any] = {"N": n, "K": k, "weight_MB": nbytes / 1e6, "copies": copies,
                                     "sweep_16_rows": []}
            for cfg in configs():
                try:
                    y = skinny_gemm(x16, weights[0], None, cfg)
                    err = float((y.double() - ref).norm() / ref.norm())
                    us = per_call_us(lambda w, c=cfg, x=x16: skinny_gemm(x, w, None, c))
                except Exception as e:  # noqa: BLE001  (a config that fails is reported, skipped)
                    entry["sweep_16_rows"].append({"config": vars(cfg), "error": repr(e)[:200]})
                    continue
                entry["sweep_16_rows"].append({"config": vars(cfg), "us": us, "rel_err": err})
            ok = sorted((r for r in entry["sweep_16_rows"] if "us" in r and r["rel_err"] < 1e-2),
                        key=lambda r: r["us"])
            best = SkinnyConfigFrom(ok[0]["config"]) if ok else None
            entry["best_16_rows"] = ok[0] if ok else None
            entry["top5_16_rows"] = ok[:5]
            chosen = skinny_config(n, k)
            entry["chosen"] = vars(chosen)
            entry["by_rows"] = {}
            for m, x in xs.items():
                row = {"cublas_us": per_call_us(lambda w, x=x: F.linear(x, w)),
                       "chosen_us": per_call_us(
                           lambda w, x=x, c=chosen: skinny_gemm(x, w, None, c))}
                if best is not None:
                    row["best16_us"] = per_call_us(
                        lambda w, x=x, c=best: skinny_gemm(x, w, None, c))
                row["GBps_chosen"] = nbytes / row["chosen_us"] / 1e3
                entry["by_rows"][m] = row
            result["shapes"][f"{model}:{name}"] = entry
            by = entry["by_rows"]
            print(f"{model:<11} {name:<8} N={n:<6} K={k:<6} best16 "
                  f"{entry['best_16_rows']['us'] if ok else float('nan'):6.2f} us "
                  f"{entry['best_16_rows']['config'] if ok else ''} | chosen {vars(chosen)} | "
                  + " ".join(f"m{m}: cublas {r['cublas_us']:.2f} ours {r['chosen_us']:.2f}"
                             for m, r in by.items()), flush=True)
            if args.out:  # after every shape: a run cut short still leaves what it measured
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=2)
            del weights
            torch.cuda.empty_cache()


def _per_call_us(weights: list[torch.Tensor], call) -> float:
    """Median time of one call inside a CUDA graph of calls over every weight copy."""
    return time_ms(graph_of(_over(weights, call)), 3, 7)["median"] * 1e3 / len(weights)


def SkinnyConfigFrom(d: dict):
    from tessera.ops.triton.skinny_gemm import SkinnyConfig

    return SkinnyConfig(**d)


if __name__ == "__main__":
    main()
