"""Fused MoE (Triton) against the per-expert loop, at qwen3-30b-a3b and deepseek-v2-lite expert
shapes, bf16, on one GPU; and, at decode sizes, the fraction of the copy-bandwidth floor it reaches
(bytes of the experts the batch touches / the device-to-device copy rate measured here), launched
eagerly and replayed from a CUDA graph (as decode runs it).

    PYTHONPATH=. python3 scripts/gpu/moe_bench.py --out moe_bench.json   (from the repo root)
"""
from __future__ import annotations

import argparse
import functools
import json

import torch
import triton.testing as tt

from tessera.ops.moe import fused_moe_torch
from tessera.ops.triton.fused_moe import fused_moe

SHAPES = {"qwen3-30b-a3b": (128, 8, 2048, 768), "deepseek-v2-lite": (64, 6, 2048, 1408)}
TOKENS = (1, 4, 16, 64, 256, 1024, 4096)


def copy_rate() -> float:
    """Device-to-device copy of a 1 GiB buffer, bytes read + written per second."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = tt.do_bench(lambda: dst.copy_(src), warmup=5, rep=50)
    return 2 * src.numel() / (ms * 1e-3)


def graphed_ms(fn) -> float:
    """fn captured into a CUDA graph and replayed: its device time without launch overhead, as
    decode runs it (inside the decode graphs)."""
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for _ in range(3):  # warm up (Triton compiles, allocator) outside the capture
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return tt.do_bench(graph.replay, warmup=10, rep=100)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rate = copy_rate()
    rows = []
    for name, (experts, top_k, hidden, inter) in SHAPES.items():
        d = {"device": "cuda", "dtype": torch.bfloat16}
        w13 = torch.randn(experts, 2 * inter, hidden, **d) * 0.02
        w2 = torch.randn(experts, hidden, inter, **d) * 0.02
        for tokens in TOKENS:
            gen = torch.Generator(device="cuda").manual_seed(tokens)
            x = torch.randn(tokens, hidden, generator=gen, **d)
            scores = torch.randn(tokens, experts, generator=gen, device="cuda").softmax(-1)
            weights, ids = scores.topk(top_k)
            ours = fused_moe(x, w13, w2, weights, ids)
            ref = fused_moe_torch(x, w13, w2, weights, ids)
            err = float((ours.float() - ref.float()).norm() / ref.float().norm())
            fused = functools.partial(fused_moe, x, w13, w2, weights, ids)
            t_ours = tt.do_bench(fused, warmup=10, rep=100)
            t_graph = graphed_ms(fused)
            t_ref = tt.do_bench(functools.partial(fused_moe_torch, x, w13, w2, weights, ids),
                                warmup=3, rep=30)
            touched = int(ids.unique().numel())
            moved = touched * 3 * inter * hidden * 2  # w13 + w2 of each touched expert, bf16
            row = {"shape": name, "tokens": tokens, "fused_ms": t_ours,
                   "fused_graph_ms": t_graph, "loop_ms": t_ref, "speedup": t_ref / t_ours,
                   "rel_err": err, "experts_touched": touched,
                   "floor_fraction": moved / rate / (t_ours * 1e-3),
                   "floor_fraction_graph": moved / rate / (t_graph * 1e-3)}
            rows.append(row)
            print(f"{name} T={tokens:5d}: fused {t_ours:.3f} ms (graph {t_graph:.3f}), loop "
                  f"{t_ref:.3f} ms (x{row['speedup']:.1f}), rel err {err:.2e}, {touched} "
                  f"experts, {row['floor_fraction']:.0%} of the copy floor "
                  f"({row['floor_fraction_graph']:.0%} in a graph)")
    report = {"device": torch.cuda.get_device_name(), "copy_bytes_per_s": rate, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
