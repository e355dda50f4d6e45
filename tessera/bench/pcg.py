"""Prefill latency with the piecewise CUDA graph against `--disable-piecewise-cuda-graph`.

For each model (bf16, dummy weights, real shapes) one single-request extend batch of N new tokens
runs through `ModelRunner.forward` (backbone + last-token logits), timed with device events:
median/min/max over `--repeat` runs after `--warmup`. The PCG runner also reports its capture time,
memory and graph count. Both runs are checked to produce the same logits (bf16 tolerance).

    python -m tessera.bench.pcg --out pcg_bench.json \\
        --case llama3-8b:16,256,1024 --case qwen3-0.6b:256

The project's targets are written next to the figures with a pass flag each.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import statistics
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import torch

logger = logging.getLogger(__name__)

# (model, tokens) -> max ms with PCG; and the PCG-vs-eager speedup wanted for N <= 256
TARGET_MS = {("llama3-8b", 16): 4.5, ("llama3-8b", 256): 6.5, ("llama3-8b", 1024): 24.0,
             ("qwen3-0.6b", 256): 1.0}
TARGET_SPEEDUP, SPEEDUP_MAX_TOKENS = 3.0, 256
TARGET_CAPTURE_S, TARGET_CAPTURE_GIB = 30.0, 1.0


def build_runner(model: str, max_tokens: int, pcg: bool, compiler: str, device: str):
    from tessera.config import EngineConfig
    from tessera.runner.model_runner import ModelRunner

    config = EngineConfig.from_kwargs(
        model_path=model, device=device, dtype="bfloat16", load_format="dummy",
        kv_cache_tokens=max(max_tokens, 4096), max_running_requests=2, disable_cuda_graph=True,
        disable_piecewise_cuda_graph=not pcg, piecewise_cuda_graph_compiler=compiler,
        piecewise_cuda_graph_max_tokens=max(max_tokens, 2048),
        # on the CPU (a smoke run) the compiled pieces run without capture
        enforce_piecewise_cuda_graph=pcg and device == "cpu")
    start = time.perf_counter()
    runner = ModelRunner(config)
    return runner, time.perf_counter() - start


def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


@contextlib.contextmanager
def prefill_batch(runner: Any, num_tokens: int, ids: str = "random") -> Iterator[Any]:
    """An EXTEND batch of one request prefilling `num_tokens` (its row and KV slots allocated,
    freed on exit). ids "random": random prompt ids seeded by the length (what every benchmark
    here times); "constant": one id repeated, which draws visibly less power in the GEMMs
    (benchmarks/prefill_opt/timing_diag.py)."""
    from tessera.forward.batch import ForwardBatch, ForwardMode

    if ids == "random":
        prompt = torch.randint(0, runner.model_config.vocab_size, (num_tokens,),
                               generator=torch.Generator().manual_seed(num_tokens)).tolist()
    elif ids == "constant":
        prompt = [5] * num_tokens
    else:
        raise ValueError(f"ids must be random or constant, got {ids!r}")
    row = runner.req_to_token_pool.alloc()
    slots = runner.allocator.alloc(num_tokens)
    runner.req_to_token_pool.write(row, 0, slots)
    try:
        yield ForwardBatch.build(ForwardMode.EXTEND, prompt, [row], [0], [num_tokens], slots,
                                 runner.device)
    finally:
        runner.allocator.free(slots)
        runner.req_to_token_pool.free(row)


def time_prefill(runner: Any, num_tokens: int, warmup: int, repeat: int) -> dict[str, Any]:
    """Event-timed forwards of one request prefilling `num_tokens` (random ids): device ms, host
    ms (the Python call alone: when it nears the device time the forward is launch bound), the
    logits and which runner ran it."""
    platform = runner.platform
    device_ms, host_ms = [], []
    with prefill_batch(runner, num_tokens) as batch:
        path = next((type(r).__name__ for r in runner.graph_runners if r.can_run(batch)),
                    "eager")
        for i in range(warmup + repeat):
            start, end = (platform.event(enable_timing=True),
                          platform.event(enable_timing=True))
            platform.synchronize()
            t0 = time.perf_counter()
            if start is not None:
                start.record()
            logits = runner.forward(batch).next_token_logits
            if end is not None:
                end.record()
            host = (time.perf_counter() - t0) * 1e3
            platform.synchronize()
            # no device events (CPU smoke runs): the host clock around a synchronize
            device = (start.elapsed_time(end) if start is not None
                      else (time.perf_counter() - t0) * 1e3)
            if i >= warmup:
                device_ms.append(device)
                host_ms.append(host)
    return {"ms": summarize(device_ms), "host_ms": summarize(host_ms),
            "logits": logits.float().cpu(), "path": path}


def free_memory(platform: Any) -> None:
    """After the caller dropped its runner: collect it and return its memory to the device.
    Dynamo's caches hold the compiled backbone (and through it the model): drop them too."""
    torch._dynamo.reset()
    gc.collect()
    platform.empty_cache()


def bench_model(model: str, sizes: list[int], args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"model": model, "compiler": args.compiler, "cases": []}
    runner, init_s = build_runner(model, max(sizes), True, args.compiler, args.device)
    (pcg,) = [r for r in runner.graph_runners if type(r).__name__ == "PiecewiseGraphRunner"]
    result["pcg"] = {"init_s": init_s, "capture_s": pcg.capture_seconds,
                     "capture_gib": pcg.capture_memory_bytes / 2**30,
                     "capture_sizes": pcg.capture_sizes,
                     "graphs": pcg.state.graphs_captured,
                     "graph_pieces": len(pcg.backend.graph_pieces)}
    pcg_runs = {n: time_prefill(runner, n, args.warmup, args.repeat) for n in sizes}
    result["pcg"]["compiles"] = pcg.monitor.compiles
    result["pcg"]["refused_recompiles"] = pcg.monitor.refused_recompiles
    platform = runner.platform
    device_name = platform.device_name()
    del runner, pcg
    free_memory(platform)
    runner, init_s = build_runner(model, max(sizes), False, args.compiler, args.device)
    result["eager_init_s"] = init_s
    for n in sizes:
        ours = pcg_runs[n]
        eager = time_prefill(runner, n, args.warmup, args.repeat)
        case = {"num_tokens": n, "path": ours["path"], "pcg_ms": ours["ms"],
                "pcg_host_ms": ours["host_ms"], "eager_ms": eager["ms"],
                "eager_host_ms": eager["host_ms"],
                "speedup": eager["ms"]["median"] / ours["ms"]["median"],
                "max_abs_logit_diff": (ours["logits"] - eager["logits"]).abs().max().item(),
                "same_argmax": bool((ours["logits"].argmax(-1)
                                     == eager["logits"].argmax(-1)).all())}
        target = TARGET_MS.get((model, n))
        if target is not None:
            case["target_ms"] = target
            case["meets_target_ms"] = ours["ms"]["median"] <= target
        if n <= SPEEDUP_MAX_TOKENS:
            case["meets_target_speedup"] = case["speedup"] >= TARGET_SPEEDUP
        result["cases"].append(case)
        logger.info("%s N=%d: PCG %.3f ms (%s, host %.3f ms), eager %.3f ms, x%.2f", model, n,
                    ours["ms"]["median"], ours["path"], ours["host_ms"]["median"],
                    eager["ms"]["median"], case["speedup"])
    del runner
    free_memory(platform)
    result["device_name"] = device_name
    result["pcg"]["meets_capture_targets"] = (result["pcg"]["capture_s"] <= TARGET_CAPTURE_S
                                              and result["pcg"]["capture_gib"]
                                              <= TARGET_CAPTURE_GIB)
    return result


def parse_case(text: str) -> tuple[str, list[int]]:
    model, _, sizes = text.partition(":")
    if not model or not sizes:
        raise argparse.ArgumentTypeError(f"--case wants MODEL:N[,N...], got {text!r}")
    return model, [int(s) for s in sizes.split(",")]


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=os.path.dirname(os.path.abspath(__file__)),
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.bench.pcg",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", type=parse_case, action="append", default=None,
                        help="MODEL:N[,N...] (default: llama3-8b:16,256,1024 qwen3-0.6b:256)")
    parser.add_argument("--compiler", choices=["eager", "inductor"], default="eager")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    cases = args.case or [("llama3-8b", [16, 256, 1024]), ("qwen3-0.6b", [256])]
    report = {"benchmark": "pcg_prefill", "git_commit": git_commit(),
              "torch_version": torch.__version__, "warmup": args.warmup, "repeat": args.repeat,
              "timing": "device events around ModelRunner.forward (backbone + last-token logits)",
              "models": []}
    for model, sizes in cases:
        report["models"].append(bench_model(model, sizes, args))
        if args.out:  # write after every model: a later failure keeps what was measured
            with open(args.out, "w") as f:
                json.dump(report, f, indent=2)
    print(f"{'model':>12} {'N':>5} | {'PCG ms':>8} {'eager ms':>9} {'x':>6} | {'target':>6}")
    for result in report["models"]:
        for case in result["cases"]:
            print(f"{result['model']:>12} {case['num_tokens']:>5} | "
                  f"{case['pcg_ms']['median']:>8.3f} {case['eager_ms']['median']:>9.3f} "
                  f"{case['speedup']:>6.2f} | {case.get('target_ms', '-'):>6}")
        pcg = result["pcg"]
        print(f"{result['model']:>12} capture: {pcg['capture_s']:.1f} s, "
              f"{pcg['capture_gib']:.2f} GiB, {pcg['graphs']} graphs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
