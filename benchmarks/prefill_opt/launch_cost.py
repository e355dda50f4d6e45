"""Host cost of the calls a piecewise-graph prefill makes per layer (GPU).

Each figure is the median host time of one call in microseconds, timed in rounds of 50 calls
between synchronizes: the `tessera::attention` op through the dispatcher, the backend's forward
(an ExtendAttention built per call: JITFunction.run), the prepared call a replay plan makes
(`AttentionBackend.prepare`: the compiled kernel's launcher after the first call), a bare
`kernel[grid](...)`, a 10-node CUDA graph replay, a slice zero_() and an empty().
qwen3-0.6b's attention shapes (16 query heads, 8 KV heads, head_dim 128).

    python benchmarks/prefill_opt/launch_cost.py --tokens 256 --out launch_cost.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def per_call_us(fn, calls: int = 50, rounds: int = 30) -> float:
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(rounds):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) * 1e6 / calls)
    torch.cuda.synchronize()
    return round(statistics.median(samples), 2)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from tessera.forward.context import set_forward_context
    from tessera.attention.triton import TritonAttentionBackend
    from tessera.attention.triton_ops.extend_attention import _extend_kernel
    from tessera.cache.kv_pool import KVPool, ReqToTokenPool
    from tessera.ops.triton import launch
    from tessera.forward.batch import ForwardBatch, ForwardMode

    dev = torch.device("cuda")
    n, hq, hk, d = args.tokens, 16, 8, 128
    pool = KVPool(1, hk, d, 4096, torch.bfloat16, dev)
    table = ReqToTokenPool(8, 4096, dev)
    row = table.alloc()
    slots = torch.arange(1, n + 1, dtype=torch.int64, device=dev)
    table.write(row, 0, slots)
    backend = TritonAttentionBackend(pool, table, hq, hk, d)
    batch = ForwardBatch.build(ForwardMode.EXTEND, [1] * n, [row], [0], [n], slots, dev)
    qkv = torch.randn(n, (hq + 2 * hk) * d, dtype=torch.bfloat16, device=dev)
    q = qkv[:, :hq * d].view(n, hq, d)
    k = qkv[:, hq * d:(hq + hk) * d].view(n, hk, d)
    v = qkv[:, (hq + hk) * d:].view(n, hk, d)
    out = torch.empty(n, hq, d, dtype=torch.bfloat16, device=dev)
    res: dict = {"tokens": n, "us": {}}
    us = res["us"]
    backend.init_forward_metadata(batch)
    with torch.inference_mode(), set_forward_context(batch, backend):
        us["custom_op"] = per_call_us(lambda: torch.ops.tessera.attention(q, k, v, out, 0, 0.1))
        us["backend_forward"] = per_call_us(
            lambda: backend.forward(q, k, v, out, 0, 0.1, batch))
        prepared = backend.prepare(q, k, v, out, 0, 0.1)
        us["prepared"] = per_call_us(lambda: prepared(batch))
        res["prepared_direct_launches"] = prepared.launch.launcher.direct_launches
        # the bare JIT launch, with the arguments the prepared launch passes
        captured = {}
        original = launch.KernelLauncher.__call__

        def spy(self, key, grid, a, kw):
            captured.update(grid=grid, args=a, kwargs=kw)
            return original(self, key, grid, a, kw)

        launch.KernelLauncher.__call__ = spy
        prepared(batch)
        launch.KernelLauncher.__call__ = original
        grid, a, kw = tuple(captured["grid"]), captured["args"], captured["kwargs"]
        us["jit_launch"] = per_call_us(lambda: _extend_kernel[grid](*a, **kw))
        us["zero_tail"] = per_call_us(lambda: out[n // 2:].zero_())
        x = torch.zeros(1024, device=dev)
        graph = torch.cuda.CUDAGraph()
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            x.add_(1)
            with torch.cuda.graph(graph, stream=s):
                for _ in range(10):
                    x.add_(1)
        us["graph_replay_10_nodes"] = per_call_us(graph.replay)
        us["torch_empty"] = per_call_us(lambda: torch.empty((n, hq, d), dtype=torch.bfloat16,
                                                            device=dev))
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
