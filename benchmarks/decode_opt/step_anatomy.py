"""Where a bs=1 decode step's time goes: host pieces, kernels, and what each kernel kind costs.

    python benchmarks/decode_opt/step_anatomy.py --model llama3-8b --out anatomy.json

Three measurements on one ModelRunner (dummy weights, bf16, triton attention, decode graph bs=1,
the engine's defaults otherwise):
  host      the step of `tessera bench latency` split into its host pieces (slot alloc, batch
            build, req_to_token scatter, graph input copies + replay launch, sampler launch, token
            read), each a median of perf_counter deltas over many steps; the device time of the
            replay from events. Pieces before the replay are time the GPU sits idle.
  kernels   torch.profiler over the replayed backbone graph without PDL: device us per step by
            kernel name (their sum vs the graph's time = the gaps between kernels).
  ablate    the backbone graph timed with and without PDL under variants: attention removed (an
            upper bound of what a faster attention kernel can save), one split per request up
            to 256 keys, the GEMV's early PDL trigger.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
sys.path.insert(0, HERE)

from profile_decode import (
    backbone_fn,
    decode_batch,
    graph_of,
    kernel_profile,
    patched,
    pdl_enabled,
    print_kernel_table,
    time_ms,
)


def build_runner(model: str):
    from tessera.config import EngineConfig
    from tessera.runner.model_runner import ModelRunner

    config = EngineConfig.from_kwargs(
        model_path=model, load_format="dummy", dtype="bfloat16", device="cuda",
        attention_backend="triton", kv_cache_tokens=8192, max_running_requests=1,
        cuda_graph_bs=[1], disable_piecewise_cuda_graph=True)
    return ModelRunner(config)


def host_pieces(runner, ctx: int, steps: int) -> dict:
    """The bench-latency decode step, piece by piece (bs=1, greedy)."""
    from tessera.bench.latency import TesseraLatency
    from tessera.forward.batch import ForwardBatch, ForwardMode

    lat = TesseraLatency(runner)
    info = lat._greedy_info(1)
    row = runner.req_to_token_pool.alloc()
    before, after = lat.events
    stamps: dict[str, list[float]] = {}
    device_ms: list[float] = []
    tokens = [1]
    seq_len = ctx
    runner.allocator.clear()
    runner.allocator.alloc(ctx)  # pretend the prompt is cached
    for step in range(steps):
        t0 = time.perf_counter()
        slots = runner.allocator.alloc(1)
        t1 = time.perf_counter()
        fb = ForwardBatch.build(ForwardMode.DECODE, tokens, [row], [seq_len], [1], slots,
                                runner.device)
        t2 = time.perf_counter()  # (recording the slots is part of the decode graph)
        before.record()
        logits = runner.forward(fb).next_token_logits
        after.record()
        t4 = time.perf_counter()
        sampled = lat.sampler.sample(logits, info).token_ids
        t5 = time.perf_counter()
        tokens = sampled.tolist()
        t6 = time.perf_counter()
        torch.cuda.synchronize()
        t7 = time.perf_counter()
        if step >= 5:
            for name, a, b in (("alloc", t0, t1), ("build", t1, t2),
                               ("forward_launch", t2, t4), ("sample_launch", t4, t5),
                               ("token_read_wait", t5, t6), ("sync", t6, t7),
                               ("step", t0, t7), ("host_before_replay", t0, t2)):
                stamps.setdefault(name, []).append((b - a) * 1e3)
            device_ms.append(before.elapsed_time(after))
        seq_len += 1
    runner.req_to_token_pool.free(row)
    runner.allocator.clear()
    out = {k: statistics.median(v) for k, v in stamps.items()}
    out["forward_device_ms"] = statistics.median(device_ms)
    return out


def host_micro(runner, reps: int = 300) -> dict:
    """Host cost (us, median over `reps`, no sync inside) of the operations a decode step issues."""

    from tessera.forward.batch import ForwardBatch, ForwardMode

    dev = runner.device
    host = [160, 0, 161, 160, 1, 0, 7]
    pinned = torch.empty(64, dtype=torch.int64, pin_memory=True)
    pinned_np = pinned.numpy()
    dev_buf = torch.empty(64, dtype=torch.int64, device=dev)
    table = runner.req_to_token_pool.req_to_token
    rows, pos, loc = (torch.zeros(1, dtype=torch.int64, device=dev),
                      torch.full((1,), 160, dtype=torch.int64, device=dev),
                      torch.ones(1, dtype=torch.int64, device=dev))
    graph_runner = runner.graph_runners[0]
    slots = runner.allocator.alloc(1)

    def build():
        ForwardBatch.build(ForwardMode.DECODE, [7], [0], [160], [1], slots, dev)

    decode_fb = ForwardBatch.build(ForwardMode.DECODE, [7], [0], [160], [1], slots, dev)

    def staged():
        pinned_np[:7] = host
        return dev_buf[:7].copy_(pinned[:7], non_blocking=True)

    ops = {
        "tensor_pinned": lambda: torch.tensor(host, dtype=torch.int64, pin_memory=True),
        "tensor_plain": lambda: torch.tensor(host, dtype=torch.int64),
        "pin_then_h2d": lambda: torch.tensor(host, dtype=torch.int64, pin_memory=True).to(
            dev, non_blocking=True),
        "staged_h2d": staged,
        "empty_device": lambda: torch.empty(7, dtype=torch.int64, device=dev),
        "cast_int32": lambda: dev_buf[:4].to(torch.int32),
        "copy_small": lambda: dev_buf[:1].copy_(rows),
        "index_put": lambda: table.__setitem__((rows, pos), loc.to(table.dtype)),
        "build": build,
        "graph_replay": lambda: graph_runner.graphs[1].replay(),
        "load_inputs": lambda: graph_runner._load_inputs(decode_fb),
        "runner_forward": lambda: runner.forward(decode_fb),
        "argmax": lambda: torch.argmax(graph_runner.logits[:1], dim=-1),
    }
    out = {}
    for name, fn in ops.items():
        for _ in range(20):
            fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
            if name in ("graph_replay", "runner_forward"):
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        out[name] = statistics.median(samples)
        print(f"host_micro {name:<16} {out[name]:8.1f} us", flush=True)
    return out


def ablations(runner, fb) -> dict:
    from tessera.attention import triton as triton_backend
    from tessera.ops.triton import pdl as pdl_module

    def no_attention(*args, **kwargs):
        return None

    out = {}
    cases = {"as_is": [],
             "no_attention": [(triton_backend, "decode_attention", no_attention)],
             "min_split_256": [(triton_backend, "MIN_KEYS_PER_SPLIT", 256)],
             "gemv_trigger_early": [(pdl_module, "GEMV_TRIGGER", "early")]}
    for pdl in (True, False):
        for name, patches in cases.items():
            with pdl_enabled(pdl):
                stack = [patched(*p) for p in patches]
                for s in stack:
                    s.__enter__()
                try:
                    replay = graph_of(backbone_fn(runner, fb))
                    t = time_ms(replay, 10, 9)
                    del replay
                finally:
                    for s in reversed(stack):
                        s.__exit__(None, None, None)
            key = f"{name}{'_pdl' if pdl else ''}"
            out[key] = t["median"] * 1e3
            print(f"ablate {key:<18} {t['median'] * 1e3:8.1f} us", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama3-8b")
    parser.add_argument("--ctx", type=int, default=160)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.manual_seed(0)
    runner = build_runner(args.model)
    result: dict = {"model": args.model, "device": torch.cuda.get_device_name()}
    with torch.inference_mode():
        result["host"] = host_pieces(runner, args.ctx, args.steps)
        print("host", json.dumps(result["host"], indent=1), flush=True)
        result["host_micro_us"] = host_micro(runner)
        fb, _ = decode_batch(runner, 1, args.ctx)
        result["ablate_us"] = ablations(runner, fb)
        with pdl_enabled(False):
            replay = graph_of(backbone_fn(runner, fb))
            result["backbone_no_pdl_us"] = time_ms(replay, 10, 9)["median"] * 1e3
            kernels = kernel_profile(replay, 10)
        result["kernels"] = kernels
        total = sum(k["us_per_step"] for k in kernels)
        result["kernel_sum_us"] = total
        print(f"kernels: sum {total:.1f} us per step vs graph {result['backbone_no_pdl_us']:.1f}",
              flush=True)
        print_kernel_table(kernels, 20)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
