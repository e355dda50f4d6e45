"""Attention backend micro-benchmark: triton vs torch_native on Llama-3-8B attention shapes.

    python -m tessera.bench.attention --out attention_bench.json

Times one layer's `backend.forward` (K/V write + attention) with device events, median over
repeats after warm-up. Decode is timed eagerly and, for triton, also as a replayed CUDA graph (how
the engine runs it). `--smoke` shrinks every shape so the script itself can be checked on a CPU
(TRITON_INTERPRET=1); its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
from collections.abc import Callable
from typing import Any

import torch

from tessera.attention import get_attention_backend_class
from tessera.attention.base import AttentionBackend
from tessera.attention.triton_ops import store_kv
from tessera.bench.timing import time_ms
from tessera.cache.kv_pool import MHAKVPool, ReqToTokenPool
from tessera.cache.spec import MHASpec
from tessera.forward.batch import ForwardBatch, ForwardMode
from tessera.platforms import current_platform


@dataclasses.dataclass(frozen=True)
class Shape:
    num_heads: int = 32      # llama3-8b
    num_kv_heads: int = 8
    head_dim: int = 128
    dtype: torch.dtype = torch.bfloat16


@dataclasses.dataclass
class Figure:
    kind: str                # decode | decode_graph | extend | kv_store
    backend: str
    batch_size: int
    context: int             # decode: tokens in cache per request; extend: cached prefix
    new_tokens: int          # per request
    median_ms: float
    min_ms: float
    max_ms: float


class Setup:
    """A one-layer KV pool with `batch_size` requests of `context + new_tokens` slots each."""

    def __init__(self, shape: Shape, batch_size: int, context: int, new_tokens: int,
                 device: torch.device) -> None:
        self.shape = shape
        seq_len = context + new_tokens
        num_slots = batch_size * seq_len
        self.pool = MHAKVPool(MHASpec(1, shape.num_kv_heads, shape.head_dim, shape.dtype),
                              num_slots, device)
        self.pool.k_buffers[0].normal_()
        self.pool.v_buffers[0].normal_()
        self.table = ReqToTokenPool(batch_size, seq_len, device)
        # requests' slots interleaved (as after some churn in a real pool), not contiguous
        slots = torch.arange(1, num_slots + 1, device=device).view(seq_len, batch_size).T
        self.table.req_to_token.copy_(slots.to(torch.int32))
        mode = ForwardMode.DECODE if new_tokens == 1 else ForwardMode.EXTEND
        self.batch = ForwardBatch.build(
            mode, [0] * (batch_size * new_tokens), list(range(batch_size)),
            [context] * batch_size, [new_tokens] * batch_size,
            slots[:, context:].reshape(-1), device)
        tokens = batch_size * new_tokens
        self.q = torch.randn(tokens, shape.num_heads, shape.head_dim, dtype=shape.dtype,
                             device=device)
        self.k = torch.randn(tokens, shape.num_kv_heads, shape.head_dim, dtype=shape.dtype,
                             device=device)
        self.v = torch.randn_like(self.k)
        self.out = torch.empty_like(self.q)
        self.scaling = shape.head_dim ** -0.5

    def backend(self, name: str) -> AttentionBackend:
        cls = get_attention_backend_class(name)
        s = self.shape
        return cls(self.pool, self.table, s.num_heads)

    def forward_fn(self, backend: AttentionBackend) -> Callable[[], None]:
        backend.init_forward_metadata(self.batch)

        def run() -> None:
            backend.forward(self.q, self.k, self.v, self.out, 0, self.scaling, self.batch)
        return run


def _figure(kind: str, backend: str, setup_args: tuple[int, int, int], times: list[float]
            ) -> Figure:
    bs, context, new = setup_args
    return Figure(kind, backend, bs, context, new, statistics.median(times), min(times),
                  max(times))


def bench_decode(shape: Shape, batch_size: int, context: int, device: torch.device,
                 backends: list[str], repeat: int) -> list[Figure]:
    setup = Setup(shape, batch_size, context - 1, 1, device)
    args = (batch_size, context, 1)
    figures = []
    for name in backends:
        # the reference loops over requests on the host: fewer repeats keep the run short
        reps = repeat if name != "torch_native" else max(3, repeat // 10)
        run = setup.forward_fn(setup.backend(name))
        figures.append(_figure("decode", name, args, time_ms(run, 3, reps)))
        if name == "triton" and current_platform().supports_full_graph:
            figures.append(_figure("decode_graph", name, args,
                                   time_ms(_captured(run), 3, repeat)))
    loc = setup.batch.out_cache_loc
    figures += _bench_kv_store(setup, loc, args, repeat)
    return figures


def bench_extend(shape: Shape, new_tokens: int, prefix: int, device: torch.device,
                 backends: list[str], repeat: int) -> list[Figure]:
    setup = Setup(shape, 1, prefix, new_tokens, device)
    args = (1, prefix, new_tokens)
    figures = []
    for name in backends:
        reps = repeat if name != "torch_native" else max(3, repeat // 10)
        run = setup.forward_fn(setup.backend(name))
        figures.append(_figure("extend", name, args, time_ms(run, 3, reps)))
    figures += _bench_kv_store(setup, setup.batch.out_cache_loc, args, repeat)
    return figures


def _bench_kv_store(setup: Setup, loc: torch.Tensor, args: tuple[int, int, int], repeat: int
                    ) -> list[Figure]:
    """The Triton K/V store vs two index_put writes (KVPool.set_kv)."""
    k_cache, v_cache = setup.pool.k_buffers[0], setup.pool.v_buffers[0]
    return [
        _figure("kv_store", "triton", args, time_ms(
            lambda: store_kv(setup.k, setup.v, k_cache, v_cache, loc), 3, repeat)),
        _figure("kv_store", "torch_index_put", args, time_ms(
            lambda: setup.pool.set_kv(0, loc, setup.k, setup.v), 3, repeat)),
    ]


def _captured(run: Callable[[], None]) -> Callable[[], None]:
    platform = current_platform()
    stream = platform.new_stream()
    stream.wait_stream(platform.current_stream())
    with platform.stream_context(stream):
        run()  # warm-up off the capture stream (Triton compiles on first launch)
    platform.current_stream().wait_stream(stream)
    graph = platform.graph_class()()
    with platform.graph_context(graph):
        run()
    return graph.replay


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", help="write the JSON here (it is printed either way)")
    parser.add_argument("--backends", default="triton,torch_native")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (checks the script)")
    args = parser.parse_args(argv)

    platform = current_platform()
    device = platform.device()
    backends = args.backends.split(",")
    if args.smoke:
        from tessera.ops.triton.interpreter import patch_for_numpy_2_4

        patch_for_numpy_2_4()  # on a CPU the kernels run interpreted (TRITON_INTERPRET=1)
        shape = Shape(num_heads=4, num_kv_heads=2, head_dim=64, dtype=torch.float16)
        decode_grid, extend_grid, repeat = [(1, 16), (2, 40)], [(20, 0), (20, 16)], 2
    else:
        shape = Shape()
        decode_grid = [(bs, ctx) for bs in (1, 32, 128) for ctx in (1024, 8192)]
        extend_grid = [(n, prefix) for n in (256, 1024) for prefix in (0, 1024)]
        repeat = args.repeat

    figures: list[Figure] = []
    for bs, ctx in decode_grid:
        figures += bench_decode(shape, bs, ctx, device, backends, repeat)
        platform.empty_cache()
    for n, prefix in extend_grid:
        figures += bench_extend(shape, n, prefix, device, backends, repeat)
        platform.empty_cache()

    for f in figures:
        print(f"{f.kind:>12} {f.backend:>15} bs={f.batch_size:<4} ctx={f.context:<5} "
              f"new={f.new_tokens:<5} median {f.median_ms:9.4f} ms  (min {f.min_ms:.4f}, "
              f"max {f.max_ms:.4f})")
    import triton

    report = {
        "config": {"shape": {**dataclasses.asdict(shape), "dtype": str(shape.dtype)},
                   "repeat": repeat, "backends": backends, "smoke": args.smoke},
        "git_commit": _git_commit(),
        "device": platform.device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "figures": [dataclasses.asdict(f) for f in figures],
    }
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
