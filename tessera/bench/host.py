"""Host time of one piecewise-graph forward, and where it goes.

A prefill whose kernels are captured is bound by the host when the Python between the graph
replays (attention, the runner's copies, the dispatch) takes longer than the GPU work. This
times each layer of that path separately, as medians of single calls after a synchronize (so the
queue is empty and nothing waits on the device):

* `forward`: ModelRunner.forward (runner + backbone + last-token logits);
* `record_slots` / `compute_logits`: the two steps of ModelRunner.forward around the replay
  (record_slots is skipped for extend batches when the backend's layer-0 launch records the
  slots, `AttentionSupport.writes_extend_slots`; timed anyway, for backends that do not);
* `replay`: PiecewiseGraphRunner.replay (copies into the static buffers, padding, metadata,
  forward context, the backbone);
* `plan`: the per-size ReplayPlan alone (graph replays + attention calls);
* `graphs_only` / `attention_only`: the plan's graph replays alone / its attention calls alone;
* `direct` / `dynamo`: the backbone through the split graph's code (DirectCall), and through
  Dynamo's guards, instead of the plan.

On a GPU (`--device cuda`) the model is a preset (real shapes, dummy weights). On the CPU the
graphs are emulated by no-op replays and attention by a no-op (`--null-attention`, the default
there), which leaves exactly the framework's own Python: a 28-layer tiny-width model by default.

    python -m tessera.bench.host --device cuda --model qwen3-0.6b --tokens 256
    python -m tessera.bench.host --device cpu --layers 28 --tokens 200
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _KeepOutputs(TorchDispatchMode):
    """While "capturing" on the CPU: keep every op's output alive, as a graph pool would."""

    def __init__(self, keep: list) -> None:
        super().__init__()
        self.keep = keep

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.keep.append(out)
        return out


class NullGraph:
    """A graph whose replay does nothing: what is left is the host's own work."""

    def __init__(self) -> None:
        self.keep: list = []

    def replay(self) -> None:
        pass


def null_graph_platform() -> Any:
    from tessera.platforms.cpu import CpuPlatform

    class NullGraphPlatform(CpuPlatform):
        supports_piecewise_graph = True

        def graph_class(self) -> type:
            return NullGraph

        def graph_pool_handle(self) -> Any:
            return None

        @contextlib.contextmanager
        def graph_context(self, graph: NullGraph, pool: Any = None, stream: Any = None):
            with _KeepOutputs(graph.keep):
                yield

    return NullGraphPlatform()


def build_runner(args: argparse.Namespace) -> Any:
    from tessera.config import EngineConfig
    from tessera.models.presets import PRESETS
    from tessera.runner.model_runner import ModelRunner

    common = {"load_format": "dummy", "disable_cuda_graph": True, "max_running_requests": 4,
              "kv_cache_tokens": max(4096, 2 * args.max_tokens),
              "piecewise_cuda_graph_max_tokens": args.max_tokens,
              "piecewise_cuda_graph_compiler": args.compiler}
    if args.device == "cpu":
        path = tempfile.mkdtemp(prefix="tessera_bench_host_")
        config = {**PRESETS["tiny-qwen3"], "num_hidden_layers": args.layers}
        with open(os.path.join(path, "config.json"), "w") as f:
            json.dump(config, f)
        engine = EngineConfig.from_kwargs(model_path=path, device="cpu", dtype="float32",
                                          attention_backend="torch_native",
                                          enforce_piecewise_cuda_graph=True, **common)
        platform = null_graph_platform()
        with mock.patch("tessera.runner.model_runner.platform_for_device", lambda d: platform):
            return ModelRunner(engine)
    engine = EngineConfig.from_kwargs(model_path=args.model, device=args.device,
                                      dtype="bfloat16", attention_backend=args.attention_backend,
                                      **common)
    return ModelRunner(engine)


def host_us(fn: Callable[[], Any], sync: Callable[[], None], warmup: int, repeat: int
            ) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        sync()
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e6)
    sync()
    return {"median": statistics.median(samples), "min": min(samples)}


def profile_top(fn: Callable[[], Any], calls: int, lines: int) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        fn()
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(lines)
    return out.getvalue()


def run(args: argparse.Namespace) -> dict[str, Any]:
    from tessera.forward.batch import ForwardBatch, ForwardMode
    from tessera.forward.context import set_forward_context
    from tessera.runner.piecewise_graph_runner import PiecewiseGraphRunner

    runner = build_runner(args)
    (pcg,) = [r for r in runner.graph_runners if isinstance(r, PiecewiseGraphRunner)]
    platform = runner.platform
    sync = platform.synchronize
    n = args.tokens
    row = runner.req_to_token_pool.alloc()
    slots = runner.allocator.alloc(n)
    runner.req_to_token_pool.write(row, 0, slots)
    ids = torch.randint(3, runner.model_config.vocab_size, (n,),
                        generator=torch.Generator().manual_seed(0)).tolist()
    batch = ForwardBatch.build(ForwardMode.EXTEND, ids, [row], [0], [n], slots, runner.device)
    size = pcg.padded_size(n)
    attn = runner.attn_backend
    result: dict[str, Any] = {
        "device": platform.device_name(), "torch": torch.__version__, "tokens": n,
        "padded_size": size, "layers": runner.model_config.num_hidden_layers,
        "direct_call": pcg.backend.direct is not None,
        "no_direct_reason": getattr(pcg.backend, "no_direct_reason", None),
        "plans": len(getattr(pcg, "plans", {})), "us": {}}
    restore = None
    if args.null_attention:
        original = type(attn).forward
        type(attn).forward = lambda self, *a, **k: None
        restore = lambda: setattr(type(attn), "forward", original)
    timings = result["us"]
    w, r = args.warmup, args.repeat
    try:
        with torch.inference_mode():
            timings["forward"] = host_us(lambda: runner.forward(batch), sync, w, r)
            timings["replay"] = host_us(lambda: pcg.replay(batch), sync, w, r)
            timings["record_slots"] = host_us(lambda: runner.record_slots(batch), sync, w, r)
            hidden = pcg.replay(batch)
            timings["compute_logits"] = host_us(lambda: runner.compute_logits(hidden, batch),
                                                sync, w, r)
            padded = pcg._padded_batch(batch, size)
            attn.init_forward_metadata(padded)
            ids_view, positions_view = padded.input_ids, padded.positions
            with set_forward_context(padded, attn):
                plan = getattr(pcg, "plans", {}).get(size)
                if plan is not None:
                    timings["plan"] = host_us(plan, sync, w, r)
                    graphs = [c.graph.replay for _, c, _ in plan.graph_calls]
                    replays = set(graphs)
                    eager = [s for s in plan.steps if s not in replays]

                    def graphs_only() -> None:
                        for replay in graphs:
                            replay()

                    def attention_only() -> None:
                        for step in eager:
                            step()

                    timings["graphs_only"] = host_us(graphs_only, sync, w, r)
                    timings["attention_only"] = host_us(attention_only, sync, w, r)
                    timings["per_graph_replay"] = timings["graphs_only"]["median"] / len(graphs)
                    timings["per_attention_call"] = (timings["attention_only"]["median"]
                                                     / max(1, len(eager)))
                    if args.profile:
                        result["profile_attention"] = profile_top(attention_only, 20, 25)
                if pcg.backend.direct is not None:
                    timings["direct"] = host_us(lambda: pcg.backbone(ids_view, positions_view),
                                                sync, w, r)
                compiled = pcg.backbone._compiled
                timings["dynamo"] = host_us(
                    lambda: pcg.monitor.call(compiled, ids_view, positions_view), sync, w, r)
            if args.profile:
                result["profile_forward"] = profile_top(lambda: runner.forward(batch), 20, 30)
    finally:
        if restore is not None:
            restore()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.bench.host",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="qwen3-0.6b", help="preset (GPU)")
    parser.add_argument("--layers", type=int, default=28, help="tiny model's layers (CPU)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--compiler", choices=["eager", "inductor"], default="eager")
    parser.add_argument("--attention-backend", default="triton")
    parser.add_argument("--null-attention", action=argparse.BooleanOptionalAction, default=None,
                        help="attention does nothing (default on the CPU)")
    parser.add_argument("--profile", action="store_true", help="add cProfile tops")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=100)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if args.null_attention is None:
        args.null_attention = args.device == "cpu"
    result = run(args)
    result["null_attention"] = args.null_attention
    profiles = {k: result.pop(k) for k in list(result) if k.startswith("profile_")}
    print(json.dumps(result, indent=2))
    for name, text in profiles.items():
        print(f"==== {name}\n{text}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({**result, **profiles}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
