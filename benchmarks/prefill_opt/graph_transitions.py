"""Device-side cost of leaving and re-entering a CUDA graph (GPU): what the split at attention
costs a piecewise forward on the GPU itself, host time excluded.

A toy forward of L layers, each a "piece" of P elementwise kernels on a [T, 4096] bf16 tensor and
one "attention" kernel (a copy), run four ways:
  * full: the whole forward captured as one CUDA graph (no transitions);
  * piecewise: one graph per piece, the attention kernel launched between them on the stream
    (what PiecewiseGraphRunner does: 2 transitions a layer);
  * piecewise_att_graph: the attention kernel captured as its own one-node graph (graph to
    graph transitions);
  * eager: every kernel launched on the stream.
Each forward is queued behind a ~2 ms `torch.cuda._sleep`, so the host has enqueued all of it
before the GPU starts: the events measure the GPU alone. Median of 9.

    python benchmarks/prefill_opt/graph_transitions.py --out graph_transitions.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "decode_opt"))

from profile_decode import graph_of  # capture after a warm-up on a side stream


def device_ms(forward, reps: int = 9) -> float:
    """Median device ms of `forward` queued behind a sleep (the GPU's time alone)."""
    samples = []
    for _ in range(reps + 2):
        torch.cuda.synchronize()
        torch.cuda._sleep(4_000_000)  # ~2 ms: the host enqueues the whole forward meanwhile
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        forward()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b))
    return statistics.median(samples[2:])


def case(tokens: int, piece_kernels: int, layers: int) -> dict:
    dev = torch.device("cuda")
    xs = [torch.randn(tokens, 4096, dtype=torch.bfloat16, device=dev) for _ in range(layers)]
    ys = [torch.empty_like(x) for x in xs]

    def piece(i: int) -> None:
        for _ in range(piece_kernels):
            xs[i].mul_(0.999)

    def attention(i: int) -> None:
        ys[i].copy_(xs[i])

    def eager() -> None:
        for i in range(layers):
            piece(i)
            attention(i)

    full = graph_of(eager)
    pieces = [graph_of(lambda i=i: piece(i)) for i in range(layers)]
    att_graphs = [graph_of(lambda i=i: attention(i)) for i in range(layers)]

    def piecewise() -> None:
        for i in range(layers):
            pieces[i]()
            attention(i)

    def piecewise_att_graph() -> None:
        for i in range(layers):
            pieces[i]()
            att_graphs[i]()

    ms = {"full": device_ms(full), "piecewise": device_ms(piecewise),
          "piecewise_att_graph": device_ms(piecewise_att_graph), "eager": device_ms(eager)}
    row = {"tokens": tokens, "layers": layers, "kernels_per_layer": piece_kernels + 1,
           "ms": {k: round(v, 4) for k, v in ms.items()},
           "us_per_transition": {
               k: round((ms[k] - ms["full"]) * 1e3 / (2 * layers), 2)
               for k in ("piecewise", "piecewise_att_graph", "eager")}}
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    for tokens, piece_kernels in ((16, 8), (256, 8)):
        row = case(tokens, piece_kernels, args.layers)
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
