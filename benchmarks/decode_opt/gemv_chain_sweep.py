"""GEMV tile configs chosen in the decode chain itself (PDL on), not one shape in isolation.

    python benchmarks/decode_opt/gemv_chain_sweep.py --model llama3-8b --out sweep.json

A bs=1 decoder layer is four GEMVs back to back: qkv (RMSNorm input stage), o_proj, gate_up
(add + RMSNorm stage), down (SiLU·mul stage). This replays that chain over enough layers' weight
copies to defeat L2, as a CUDA graph with programmatic dependent launch, and tunes one shape's
config at a time (coordinate descent from `gemv_config`'s choice) with the other
shapes at their current best: what a config costs includes how it overlaps its neighbours.
Then the default and the best configs with the early PDL trigger (pdl.GEMV_TRIGGER). Prints us
per layer.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from profile_decode import (
    CUDA,
    L2_BYTES,
    SHAPES,
    SMOKE_SHAPES,
    graph_of,
    pdl_enabled,
    time_ms,
)

NAMES = ("qkv", "o_proj", "gate_up", "down")


def candidates(n: int, k: int) -> list:
    from tessera.ops.triton.gemv import GemvConfig

    out = []
    for bn, bk, warps, stages in itertools.product((4, 8, 16, 32), (256, 512, 1024), (4, 8),
                                                   (1, 3)):
        if bk > k or bn * bk / (32 * warps) > 128 or n % bn:
            continue
        out.append(GemvConfig(bn, bk, warps, stages))
    return out


def main() -> None:
    from tessera.ops.triton import pdl
    from tessera.ops.triton.gemv import gemv, gemv_config, gemv_rms_norm, gemv_silu_mul

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--passes", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # no GPU: a logic check on a tiny shape set in Triton's interpreter (numbers meaningless)
    table = {name: {**SHAPES, **SMOKE_SHAPES}[args.model][name] for name in NAMES}
    dev, dt = ("cuda", torch.bfloat16) if CUDA else ("cpu", torch.float32)
    if not CUDA:
        from tessera.ops.triton.interpreter import patch_for_numpy_2_4

        patch_for_numpy_2_4()
    layer_bytes = sum(n * k * 2 for n, k in table.values())
    layers = max(4, min(28, -(-3 * L2_BYTES // layer_bytes)))
    gen = torch.Generator(device=dev).manual_seed(0)
    w = {name: [torch.randn(n, k, device=dev, dtype=dt, generator=gen) * 0.02
                for _ in range(layers)] for name, (n, k) in table.items()}
    hidden = table["qkv"][1]
    x = torch.randn(1, hidden, device=dev, dtype=dt, generator=gen)
    res = torch.randn(1, hidden, device=dev, dtype=dt, generator=gen)
    nw = torch.ones(hidden, device=dev, dtype=dt)
    attn_out = torch.randn(1, table["o_proj"][1], device=dev, dtype=dt, generator=gen)
    gate_up = torch.randn(1, table["gate_up"][0], device=dev, dtype=dt, generator=gen)

    def chain(cfg: dict):
        def fn() -> None:
            for i in range(layers):
                gemv_rms_norm(x, res, nw, 1e-6, w["qkv"][i], config=cfg["qkv"])
                gemv(attn_out, w["o_proj"][i], None, cfg["o_proj"])
                gemv_rms_norm(x, res, nw, 1e-6, w["gate_up"][i], config=cfg["gate_up"])
                gemv_silu_mul(gate_up, w["down"][i], None, cfg["down"])
        return fn

    def measure(cfg: dict) -> float:
        replay = graph_of(chain(cfg))
        t = time_ms(replay, 3, 5)["median"] * 1e3 / layers
        del replay
        return t

    result: dict = {"model": args.model, "layers": layers,
                    "floor_us_per_layer_4.26TBps": layer_bytes / 4.26e6}
    with torch.inference_mode(), pdl_enabled(True):
        pdl.GEMV_TRIGGER = "late"
        best = {name: gemv_config(*table[name]) for name in NAMES}
        default = dict(best)
        default_us = best_us = measure(best)
        print(f"default configs: {default_us:.2f} us/layer", flush=True)
        tried = []
        for _ in range(args.passes):
            for name in NAMES:
                for cfg in candidates(*table[name]):
                    if cfg == best[name]:
                        continue
                    trial = dict(best, **{name: cfg})
                    try:
                        us = measure(trial)
                    except Exception as e:  # noqa: BLE001  (a config that fails: skipped)
                        tried.append({"shape": name, "config": vars(cfg), "error": repr(e)[:160]})
                        continue
                    tried.append({"shape": name, "config": vars(cfg), "us_per_layer": us})
                    if us < best_us * 0.997:
                        best, best_us = trial, us
                        print(f"{name:<8} -> {vars(cfg)}: {us:.2f} us/layer", flush=True)
        result.update(default_us_per_layer=default_us, best_us_per_layer=best_us,
                      best={n: vars(c) for n, c in best.items()}, tried=tried,
                      default_again_us_per_layer=measure(default))
        print(f"best {best_us:.2f} us/layer (default {default_us:.2f}, again "
              f"{result['default_again_us_per_layer']:.2f}): "
              f"{json.dumps(result['best'])}", flush=True)
        pdl.GEMV_TRIGGER = "early"
        result["early_trigger_us_per_layer"] = {"default": measure(default), "best": measure(best)}
        print(f"early trigger: {result['early_trigger_us_per_layer']}", flush=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        pdl.GEMV_TRIGGER = "late"


if __name__ == "__main__":
    main()
