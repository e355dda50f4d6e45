"""Few-row GEMMs in the chain they run in (GPU): cuBLAS against tessera's stream GEMM.

A kernel that wins back to back in a sweep can lose in the forward (session 6's skinny GEMM:
faster alone, 0.25 ms slower in the llama3-8b 16-token prefill), so this measures both:
  * sweep: per projection shape, device time per call inside a CUDA graph of 32 calls over 32
    different weight matrices (as the 32 layers stream theirs: nothing reused from L2), for
    cuBLAS (F.linear) and stream_gemm configurations;
  * chain: the model's layer stack at M rows without attention math, split like the piecewise
    forward: per layer one graph [o_proj, add+RMSNorm, gate_up, SiLU*mul, down, add+RMSNorm,
    qkv] and an eager stand-in for attention between graphs (a copy of the q columns), our
    Triton norm/activation kernels with PDL as the engine runs them. Variants choose cuBLAS or
    stream_gemm (its best sweep config, or stream_config's default: "..._default_config") per
    projection. Forwards are queued behind a sleep so
    the events time the GPU alone; median of 9.

    python benchmarks/prefill_opt/stream_chain.py --model llama3-8b --rows 16 64 --out x.json
"""
from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import sys

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "decode_opt"))

from graph_transitions import device_ms  # GPU-only timing (the forward queued behind a sleep)
from profile_decode import SHAPES, graph_of  # weight shapes; capture after a warm-up

from tessera.models.presets import PRESETS


def configs(n: int, k: int, rows: int):
    from tessera.ops.triton.stream_gemm import StreamConfig, stream_config

    for block_n, block_k, stages in itertools.product((64, 128), (64, 128), (2, 3, 4)):
        auto = stream_config(n, k, block_n, block_k, rows).split
        for split in sorted({max(1, auto // 2), auto, auto * 2}):
            if k % (split * block_k):
                continue
            yield StreamConfig(block_n=block_n, block_k=block_k, split=split,
                               num_warps=4 if block_n == 64 else 8, num_stages=stages)


def many(fn, x: torch.Tensor, ws: list[torch.Tensor]) -> None:
    for w in ws:
        fn(x, w)


def sweep(m: int, ws: list[torch.Tensor]) -> tuple[dict, object]:
    """Per-call device times of cuBLAS and every stream_gemm config on one shape (the layers'
    weights `ws`); the best config."""
    from tessera.ops.triton.stream_gemm import stream_gemm

    n, k = ws[0].shape
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    times = {"cublas": device_ms(graph_of(functools.partial(many, F.linear, x, ws)))
             * 1e3 / len(ws)}
    best = None
    for cfg in configs(n, k, m):
        label = f"n{cfg.block_n}_k{cfg.block_k}_s{cfg.num_stages}_split{cfg.split}"
        try:
            fn = functools.partial(stream_gemm, config=cfg)
            ref = F.linear(x, ws[0]).float()
            err = float((fn(x, ws[0]).float() - ref).norm() / ref.norm())
            assert err < 1e-2, err
            times[label] = device_ms(graph_of(functools.partial(many, fn, x, ws))) \
                * 1e3 / len(ws)
            if best is None or times[label] < best[1]:
                best = (cfg, times[label])
        except Exception as e:  # noqa: BLE001  (shared memory, ...)
            times[label] = repr(e)[:100]
    return times, best


def chain(m: int, weights: dict, best_config: dict, choice: dict) -> float:
    """Device ms of the piecewise layer stack with the projections in `choice` on stream_gemm."""
    from tessera.ops.triton.activation import silu_and_mul
    from tessera.ops.triton.rmsnorm import fused_add_rms_norm
    from tessera.ops.triton.stream_gemm import stream_gemm

    dev = torch.device("cuda")
    layers = len(weights["qkv"])
    hidden, attn_width = weights["o_proj"][0].shape  # attention width: heads x head_dim
    norm_w = torch.ones(hidden, dtype=torch.bfloat16, device=dev)
    # static buffers only (graphs replay on fixed addresses): layer l reads residual[l] and
    # writes residual[l + 1]
    residual = [torch.randn(m, hidden, dtype=torch.bfloat16, device=dev)
                for _ in range(layers + 1)]
    attn_out = torch.randn(m, attn_width, dtype=torch.bfloat16, device=dev)
    qkv_out = [torch.empty(m, weights["qkv"][0].shape[0], dtype=torch.bfloat16, device=dev)
               for _ in range(layers)]

    def gemm(name: str, x: torch.Tensor, layer: int) -> torch.Tensor:
        w = weights[name][layer]
        if choice.get(name) == "default":  # stream_config's choice, as the engine runs it
            return stream_gemm(x, w)
        if choice.get(name):
            return stream_gemm(x, w, config=best_config[name])
        return F.linear(x, w)

    def piece(layer: int) -> None:
        h = gemm("o_proj", attn_out, layer)
        h, res = fused_add_rms_norm(h, residual[layer], norm_w, 1e-5)
        h = silu_and_mul(gemm("gate_up", h, layer))
        h = gemm("down", h, layer)
        h, res = fused_add_rms_norm(h, res, norm_w, 1e-5)
        residual[layer + 1].copy_(res)
        qkv_out[layer].copy_(gemm("qkv", h, layer))

    graphs = [graph_of(functools.partial(piece, layer)) for layer in range(layers)]

    def forward() -> None:
        for layer in range(layers):
            graphs[layer]()
            attn_out.copy_(qkv_out[layer][:, :attn_width])  # the attention stand-in
    return round(device_ms(forward), 4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[16])
    parser.add_argument("--model", choices=["llama3-8b", "qwen3-0.6b"], default="llama3-8b")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from tessera.ops.triton import pdl

    pdl.set_enabled(True)
    torch.manual_seed(0)
    shapes = {name: shape for name, shape in SHAPES[args.model].items() if name != "lm_head"}
    layers = PRESETS[args.model]["num_hidden_layers"]
    weights = {name: [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
                      for _ in range(layers)] for name, (n, k) in shapes.items()}
    result = {"device": torch.cuda.get_device_name(), "model": args.model, "rows": {}}
    variants = {"cublas": {}, "stream_qkv_o_down": {"qkv": 1, "o_proj": 1, "down": 1},
                "stream_all": dict.fromkeys(shapes, 1),
                "stream_all_default_config": dict.fromkeys(shapes, "default"),
                "stream_o_down": {"o_proj": 1, "down": 1}, "stream_qkv": {"qkv": 1},
                "cublas_again": {}}
    for m in args.rows:
        entry = {"sweep_us": {}, "best": {}, "chain_ms": {}}
        best_config = {}
        for name, (n, k) in shapes.items():
            times, (cfg, us) = sweep(m, weights[name])
            best_config[name] = cfg
            entry["sweep_us"][name] = {key: (round(v, 2) if isinstance(v, float) else v)
                                       for key, v in times.items()}
            entry["best"][name] = {"config": cfg.__dict__, "us": round(us, 2),
                                   "cublas_us": round(times["cublas"], 2),
                                   "GBps": round(n * k * 2 / us / 1e3)}
            print(m, name, json.dumps(entry["best"][name]), flush=True)
            print("   ", json.dumps(entry["sweep_us"][name]), flush=True)
        for label, choice in variants.items():
            entry["chain_ms"][label] = chain(m, weights, best_config, choice)
            print(m, "chain", label, entry["chain_ms"][label], flush=True)
        result["rows"][m] = entry
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
