"""Sampling ops micro-benchmark: top_k=50 + top_p=0.9 sampling, torch (sort-based) vs triton
(sorting-free rejection) vs flashinfer (when importable), on vocab 151936.

    python -m tessera.bench.sampling --out sampling_bench.json [--sweep]

Times one top_k_top_p_sampling_from_probs call per repeat with device events (median / min / max
after warm-up), for both filter orders, with the per-row top_k / top_p / seed / offset tensors a
batched sampler passes. Triton is also timed replayed from a CUDA graph (launch overhead gone, as
in the engine's decode graphs). --sweep also times a few Triton kernel configs at one batch size.
--smoke shrinks everything so the script can be checked on a CPU (TRITON_INTERPRET=1); its
numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tessera.bench.timing import time_ms
from tessera.platforms import current_platform
from tessera.sampling import ops

if TYPE_CHECKING:
    from tessera.sampling.ops.triton_backend import KernelConfig

TOP_K, TOP_P = 50, 0.9
ORDERS = ("top_k_first", "joint")


@dataclasses.dataclass
class Figure:
    backend: str  # torch | triton | triton_graph | flashinfer | triton[<config>]
    order: str
    batch_size: int
    median_ms: float
    min_ms: float
    max_ms: float


def as_graph(fn: Callable[[], Any]) -> Callable[[], Any] | None:
    """fn captured in a device graph (None where the platform has none)."""
    platform = current_platform()
    if not platform.supports_full_graph:
        return None
    stream = platform.new_stream()
    stream.wait_stream(platform.current_stream())
    with platform.stream_context(stream):
        fn()  # compile and allocate outside the capture
    platform.current_stream().wait_stream(stream)
    graph = platform.graph_class()()
    with platform.graph_context(graph):
        fn()
    return graph.replay


class Batch:
    """Probabilities shaped like an LLM's (softmax of scaled Gaussian logits) and the per-row
    parameter tensors of a batched sampler."""

    def __init__(self, batch_size: int, vocab: int, device: torch.device) -> None:
        gen = torch.Generator().manual_seed(batch_size)
        logits = torch.randn(batch_size, vocab, generator=gen) * 3.0
        self.probs = torch.softmax(logits, -1).to(device)
        self.top_k = torch.full((batch_size,), TOP_K, dtype=torch.int32, device=device)
        self.top_p = torch.full((batch_size,), TOP_P, dtype=torch.float32, device=device)
        self.seed = torch.arange(batch_size, dtype=torch.int64, device=device) + 1234
        self.offset = torch.zeros(batch_size, dtype=torch.int64, device=device)

    def call(self, backend: str, order: str, backend_obj: Any = None) -> Callable[[], Any]:
        def run() -> Any:
            if backend_obj is not None:  # a specific Triton config, bypassing the registry
                return backend_obj.sample(self.probs, indices=None, top_k=self.top_k,
                                          top_p=self.top_p, min_p=None, filter_apply_order=order,
                                          generator=None, seed=self.seed, offset=self.offset)
            return ops.top_k_top_p_sampling_from_probs(
                self.probs, self.top_k, self.top_p, filter_apply_order=order, seed=self.seed,
                offset=self.offset, backend=backend)
        return run


def figure(backend: str, order: str, batch_size: int, times: list[float]) -> Figure:
    return Figure(backend, order, batch_size, statistics.median(times), min(times), max(times))


def bench_batch(batch_size: int, vocab: int, device: torch.device, warmup: int,
                repeat: int) -> list[Figure]:
    batch = Batch(batch_size, vocab, device)
    backends = [b for b in ("torch", "triton", "flashinfer") if b in ops.available_backends()]
    figures = []
    for order in ORDERS:
        for backend in backends:
            fn = batch.call(backend, order)
            try:
                figures.append(figure(backend, order, batch_size, time_ms(fn, warmup, repeat)))
            except (RuntimeError, TypeError, ValueError) as e:
                if backend != "flashinfer":  # ours must work; an old flashinfer may not take
                    raise                    # device seed tensors, which should not stop the run
                print(f"skipping flashinfer {order} bs={batch_size}: {type(e).__name__}: {e}")
                continue
            if backend == "triton":
                replay = as_graph(fn)
                if replay is not None:
                    figures.append(figure("triton_graph", order, batch_size,
                                          time_ms(replay, warmup, repeat)))
    return figures


def sweep(batch_size: int, vocab: int, device: torch.device, warmup: int,
          repeat: int) -> list[Figure]:
    """A few Triton configs around the default (block, stages, warps, candidates, edges)."""
    from tessera.sampling.ops.triton_backend import DEFAULT_CONFIG, TritonSamplingBackend

    d = DEFAULT_CONFIG
    configs: list[KernelConfig] = [d] + [dataclasses.replace(d, **kw) for kw in (
        {"block": 2048, "search_block": 2048, "num_stages": 3},
        {"block": 512, "search_block": 512, "num_stages": 6},
        {"num_stages": 2}, {"num_warps": 4}, {"num_warps": 16},
        {"candidates": 2}, {"candidates": 8},
        {"search_edges": 4}, {"search_edges": 16})]
    batch = Batch(batch_size, vocab, device)
    figures = []
    for cfg in configs:
        tag = ",".join(f"{k}={v}" for k, v in dataclasses.asdict(cfg).items()
                       if v != getattr(d, k)) or "default"
        backend = TritonSamplingBackend(cfg)
        for order in ORDERS:
            fn = batch.call("triton", order, backend)
            figures.append(figure(f"triton[{tag}]", order, batch_size,
                                  time_ms(fn, warmup, repeat)))
    return figures


def print_table(figures: list[Figure]) -> None:
    cells: dict[tuple[int, str], dict[str, float]] = {}
    for f in figures:
        cells.setdefault((f.batch_size, f.order), {})[f.backend] = f.median_ms
    columns = ["torch", "triton", "triton_graph", "flashinfer"]
    print("| batch | order | " + " | ".join(f"{c} ms" for c in columns)
          + " | torch / triton |")
    print("|---|---|" + "---|" * (len(columns) + 1))
    for (bs, order), row in sorted(cells.items()):
        vals = [f"{row[c]:.4f}" if c in row else "-" for c in columns]
        speedup = (f"{row['torch'] / row['triton']:.1f}x"
                   if "torch" in row and "triton" in row else "-")
        print(f"| {bs} | {order} | " + " | ".join(vals) + f" | {speedup} |")


def print_sweep(figures: list[Figure]) -> None:
    print(f"\n| triton config (batch {figures[0].batch_size}) | order | median ms |")
    print("|---|---|---|")
    for f in figures:
        print(f"| {f.backend} | {f.order} | {f.median_ms:.4f} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the figures here as JSON")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32, 128, 512])
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--sweep", action="store_true", help="also time Triton kernel configs")
    parser.add_argument("--sweep-batch", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch_sizes, args.vocab, args.warmup, args.repeat = [2], 256, 1, 2
        args.sweep_batch = 2
    platform = current_platform()
    device = platform.device()
    figures = [f for bs in args.batch_sizes
               for f in bench_batch(bs, args.vocab, device, args.warmup, args.repeat)]
    print_table(figures)
    record = {
        "device": platform.device_name(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "flashinfer": _version("flashinfer"),
        "vocab": args.vocab, "top_k": TOP_K, "top_p": TOP_P,
        "warmup": args.warmup, "repeat": args.repeat,
        "figures": [dataclasses.asdict(f) for f in figures],
        "sweep": [],
    }
    _write(args.out, record)  # now, so a sweep cut short still leaves the main figures
    if args.sweep:
        swept = sweep(args.sweep_batch, args.vocab, device, args.warmup, args.repeat)
        print_sweep(swept)
        record["sweep"] = [dataclasses.asdict(f) for f in swept]
        _write(args.out, record)


def _write(path: str | None, record: dict) -> None:
    if path:
        with open(path, "w") as fh:
            json.dump(record, fh, indent=2)
        print(f"wrote {path}")


def _version(package: str) -> str | None:
    try:
        module = __import__(package)
    except ImportError:
        return None
    return getattr(module, "__version__", "unknown")


if __name__ == "__main__":
    main()
