"""Decode-latency study (bs=1 focus) behind benchmarks/results/2026-11-23_h200_decode_opt_*.

    python benchmarks/decode_opt/profile_decode.py gemv --out gemv.json
    python benchmarks/decode_opt/profile_decode.py variants --model qwen3-0.6b --out v.json

`gemv`: every linear shape of qwen3-0.6b and llama3-8b at one row: cuBLAS (F.linear) against the
Triton GEMV (tessera/ops/triton/gemv.py) over a grid of tile configs. Each figure is the median
time per call inside a replayed CUDA graph of many calls that rotate over enough weight copies to
defeat the 60 MB L2 (as consecutive layers do), so launch gaps count as in a decode graph.

`variants`: the model's backbone (embedding -> layers -> norm, what the decode graph holds) for
one decode step, captured as a CUDA graph and replayed, under the code paths of each change:
  fused_decode   one-row linears through F.linear (`--linear-backend torch`); attention as
                 shipped: one decode kernel (store + split-K + in-kernel merge), fused q/k
                 RMSNorm + rotary (Qwen3)
  split128       fused_decode with a 128 keys-per-split floor (default 64)
  gemv           + one-row linears and the LM head through the Triton GEMV (the default on
                 CUDA: `--linear-backend triton`)
  gemv_pdl       + programmatic dependent launch for our Triton kernels (the engine's default
                 since session 3; `--disable-pdl` turns it off)
with a per-kernel profile (torch.profiler) of fused_decode and gemv_pdl. The first study also
timed the code before this work (a copy of the old two-stage decode kernel, since removed):
benchmarks/results/2026-11-23_h200_s2_decode_variants.txt. `--cpu-smoke` runs the logic on a
tiny model through Triton's interpreter without graphs (numbers meaningless).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

CUDA = torch.cuda.is_available()
L2_BYTES = 60 << 20

SHAPES = {  # name -> (N, K) of the weight
    "qwen3-0.6b": {"qkv": (4096, 1024), "o_proj": (1024, 2048), "gate_up": (6144, 1024),
                   "down": (1024, 3072), "lm_head": (151936, 1024)},
    "llama3-8b": {"qkv": (6144, 4096), "o_proj": (4096, 4096), "gate_up": (28672, 4096),
                  "down": (4096, 14336), "lm_head": (128256, 4096)},
}
SMOKE_SHAPES = {"tiny-qwen3": {"qkv": (128, 64), "o_proj": (64, 64), "gate_up": (256, 64),
                               "down": (64, 128)}}


# ---- timing ---------------------------------------------------------------------------------------
def graph_of(fn: Callable[[], Any]) -> Callable[[], None]:
    """Capture fn into a CUDA graph (warmed up on a side stream); eager fn on CPU."""
    if not CUDA:
        return fn
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    torch.cuda.synchronize()
    graph._keep = fn  # keep the captured closures' tensors alive
    return graph.replay


def time_ms(fn: Callable[[], Any], inner: int, reps: int) -> dict[str, float]:
    """Median (and spread) of the per-call time of `inner` back-to-back calls, `reps` times."""
    for _ in range(3):
        fn()
    samples = []
    for _ in range(reps):
        if CUDA:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(inner):
                fn()
            b.record()
            b.synchronize()
            samples.append(a.elapsed_time(b) / inner)
        else:
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) * 1e3 / inner)
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples)}


def kernel_profile(fn: Callable[[], Any], steps: int) -> list[dict[str, Any]]:
    """Device time per step of every kernel name (torch.profiler over `steps` calls)."""
    if not CUDA:
        return []
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    rows = []
    for e in prof.key_averages():
        total = getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0)
        if total > 0:
            rows.append({"kernel": e.key[:110], "calls_per_step": e.count / steps,
                         "us_per_step": total / steps, "us_per_call": total / max(e.count, 1)})
    rows.sort(key=lambda r: -r["us_per_step"])
    return rows


def print_kernel_table(kernels: list[dict[str, Any]], top: int) -> None:
    """The `top` rows of a kernel_profile, one line each."""
    for k in kernels[:top]:
        print(f"  {k['us_per_step']:8.1f} us/step {k['calls_per_step']:5.0f} calls "
              f"{k['us_per_call']:7.2f} us/call  {k['kernel']}", flush=True)


# ---- GEMV sweep -----------------------------------------------------------------------------------
def gemv_configs(n: int, k: int, smoke: bool) -> list:
    from tessera.ops.triton.gemv import GemvConfig

    if smoke:
        return [GemvConfig(4, 64), GemvConfig(8, 32)]
    out = []
    for bn in (2, 4, 8, 16):
        for bk in (256, 512, 1024):
            for warps in (4, 8):
                if bk > k or bn * bk / (32 * warps) > 64:
                    continue
                for stages in (1, 3):
                    out.append(GemvConfig(bn, bk, warps, stages))
    return out


def _over(weights: list[torch.Tensor], call: Callable[[torch.Tensor], Any]) -> Callable[[], None]:
    def fn() -> None:
        for w in weights:
            call(w)
    return fn


def gemv_sweep(args: argparse.Namespace) -> dict[str, Any]:
    from tessera.ops.triton.gemv import gemv

    device = "cuda" if CUDA else "cpu"
    dtype = torch.bfloat16 if CUDA else torch.float32
    shapes = SMOKE_SHAPES if args.cpu_smoke else SHAPES
    result: dict[str, Any] = {}
    for model, table in shapes.items():
        for name, (n, k) in table.items():
            nbytes = n * k * 2
            copies = 2 if args.cpu_smoke else max(4, min(64, -(-3 * L2_BYTES // nbytes)))
            gen = torch.Generator(device=device).manual_seed(0)
            weights = [torch.randn(n, k, device=device, dtype=dtype, generator=gen) * 0.02
                       for _ in range(copies)]
            x = torch.randn(1, k, device=device, dtype=dtype, generator=gen)
            ref = (x.double() @ weights[0].double().T)
            entry: dict[str, Any] = {"N": n, "K": k, "weight_MB": nbytes / 1e6, "copies": copies,
                                     "floor_us": nbytes / 4.26e6}

            inner, reps = (1, 2) if args.cpu_smoke else (3, 7)
            t = time_ms(graph_of(_over(weights, lambda w, x=x: F.linear(x, w))), inner, reps)
            entry["cublas_us"] = t["median"] * 1e3 / copies
            rows = []
            for cfg in gemv_configs(n, k, args.cpu_smoke):
                try:
                    y = gemv(x, weights[0], None, cfg)
                    err = float((y.double() - ref).norm() / ref.norm())
                    t = time_ms(graph_of(_over(weights, lambda w, c=cfg, x=x: gemv(x, w, None, c))),
                                inner, reps)
                except Exception as e:  # noqa: BLE001  (a config that fails is reported, skipped)
                    rows.append({"config": vars(cfg), "error": repr(e)[:200]})
                    continue
                rows.append({"config": vars(cfg), "us": t["median"] * 1e3 / copies,
                             "rel_err": err})
            ok = sorted((r for r in rows if "us" in r and r["rel_err"] < 1e-2),
                        key=lambda r: r["us"])
            entry["best"] = ok[0] if ok else None
            entry["top5"] = ok[:5]
            entry["failed"] = [r for r in rows if "error" in r or r.get("rel_err", 0) >= 1e-2]
            result[f"{model}:{name}"] = entry
            if args.out:  # after every shape: a run cut short still leaves what it measured
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=2, default=str)
            best = entry["best"]
            print(f"gemv {model:<11} {name:<8} N={n:<7} K={k:<6} floor {entry['floor_us']:7.2f} us"
                  f" | cuBLAS {entry['cublas_us']:7.2f} us | triton best "
                  f"{best['us'] if best else float('nan'):7.2f} us {best['config'] if best else ''}",
                  flush=True)
            del weights
            if CUDA:
                torch.cuda.empty_cache()
            if name == "down" and CUDA and not args.cpu_smoke:  # before the big LM head
                result[f"{model}:layer_chain"] = layer_chain(model, table, result)
    return result


def layer_chain(model: str, table: dict[str, tuple[int, int]], sweep: dict) -> dict[str, Any]:
    """The four linears of a decoder layer back to back (over enough layers' weight copies to
    defeat L2): cuBLAS vs the GEMV with its default configs, without and with programmatic
    dependent launch (first weight tile loaded before waiting for the previous kernel)."""
    from tessera.ops.triton import pdl
    from tessera.ops.triton.gemv import gemv

    names = [n for n in ("qkv", "o_proj", "gate_up", "down") if n in table]
    layer_bytes = sum(table[n][0] * table[n][1] * 2 for n in names)
    layers = max(2, min(28, -(-3 * L2_BYTES // layer_bytes)))
    gen = torch.Generator(device="cuda").manual_seed(1)
    weights = {n: [torch.randn(*table[n], device="cuda", dtype=torch.bfloat16, generator=gen)
                   for _ in range(layers)] for n in names}
    xs = {n: torch.randn(1, table[n][1], device="cuda", dtype=torch.bfloat16, generator=gen)
          for n in names}
    out: dict[str, Any] = {"layers": layers, "floor_us_per_layer": layer_bytes / 4.26e6}

    def chain(call) -> Callable[[], None]:
        def fn() -> None:
            for i in range(layers):
                for n in names:
                    call(n, i)
        return fn

    t = time_ms(graph_of(chain(lambda n, i: F.linear(xs[n], weights[n][i]))), 3, 7)
    out["cublas_us_per_layer"] = t["median"] * 1e3 / layers
    for flag in (False, True):
        pdl.set_enabled(flag)
        try:
            t = time_ms(graph_of(chain(lambda n, i: gemv(xs[n], weights[n][i]))), 3, 7)
            out[f"gemv{'_pdl' if flag else ''}_us_per_layer"] = t["median"] * 1e3 / layers
        finally:
            pdl.set_enabled(False)
    print(f"chain {model:<11} {json.dumps(out)}", flush=True)
    return out


# ---- code-path variants -----------------------------------------------------------------------
@contextlib.contextmanager
def patched(obj: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


@contextlib.contextmanager
def one_row_linear(backend: str) -> Iterator[None]:
    """One-row linears (and the LM head) through `backend` ("triton": the GEMV, "torch")."""
    from tessera.ops.linear import one_row_backend, set_one_row_backend

    previous = one_row_backend()
    set_one_row_backend(backend)
    try:
        yield
    finally:
        set_one_row_backend(previous)


@contextlib.contextmanager
def pdl_enabled(flag: bool) -> Iterator[None]:
    from tessera.ops.triton import pdl

    previous = pdl.enabled()
    pdl.set_enabled(flag)
    try:
        yield
    finally:
        pdl.set_enabled(previous)


VARIANTS = ["fused_decode", "split128", "gemv", "gemv_pdl"]


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    from tessera.attention import triton as triton_backend

    with contextlib.ExitStack() as stack:
        if name.startswith("split"):
            stack.enter_context(patched(triton_backend, "MIN_KEYS_PER_SPLIT", int(name[5:])))
        stack.enter_context(one_row_linear("triton" if name.startswith("gemv") else "torch"))
        stack.enter_context(pdl_enabled(name.endswith("_pdl")))
        yield


def build_runner(model: str, max_bs: int, tokens: int):
    from tessera.config import EngineConfig
    from tessera.runner.model_runner import ModelRunner

    config = EngineConfig.from_kwargs(
        model_path=model, load_format="dummy", dtype="bfloat16" if CUDA else "float32",
        device="cuda" if CUDA else "cpu", attention_backend="triton", kv_cache_tokens=tokens,
        max_running_requests=max_bs, disable_cuda_graph=True, disable_piecewise_cuda_graph=True)
    return ModelRunner(config)


def decode_batch(runner, bs: int, ctx: int):
    """Prefill bs requests of ctx - 1 tokens (eagerly), then the decode batch of their next
    token: the step a decode graph would run at context length ctx."""
    from tessera.forward.batch import ForwardBatch, ForwardMode

    gen = torch.Generator().manual_seed(ctx)
    vocab = runner.model_config.vocab_size
    rows = [runner.req_to_token_pool.alloc() for _ in range(bs)]
    prompt = torch.randint(0, vocab, (bs * (ctx - 1),), generator=gen).tolist()
    slots = runner.allocator.alloc(bs * (ctx - 1))
    for i, row in enumerate(rows):
        runner.req_to_token_pool.write(row, 0, slots[i * (ctx - 1):(i + 1) * (ctx - 1)])
    fb = ForwardBatch.build(ForwardMode.EXTEND, prompt, rows, [0] * bs, [ctx - 1] * bs, slots,
                            runner.device)
    runner.forward(fb)
    new = runner.allocator.alloc(bs)
    for i, row in enumerate(rows):
        runner.req_to_token_pool.write(row, ctx - 1, new[i:i + 1])
    tokens = torch.randint(0, vocab, (bs,), generator=gen).tolist()
    return ForwardBatch.build(ForwardMode.DECODE, tokens, rows, [ctx - 1] * bs, [1] * bs, new,
                              runner.device), rows


def backbone_fn(runner, fb) -> Callable[[], torch.Tensor]:
    from tessera.forward.context import set_forward_context

    backend = runner.attn_backend

    def forward() -> torch.Tensor:
        backend.init_forward_metadata(fb)
        with set_forward_context(fb, backend):
            return runner.model(fb.input_ids, fb.positions)

    return forward


def run_variants(args: argparse.Namespace) -> dict[str, Any]:
    """Every variant timed first; the per-kernel profiles last (after a torch.profiler session
    every later graph replay ran ~0.4 us per kernel slower in the first study run)."""
    model = args.model
    cases = [(args.batch, args.ctx), (1, args.long_ctx), (1, args.ctx)]  # bs=1 ctx last
    tokens = sum(bs * (ctx + 8) for bs, ctx in cases) + 64
    runner = build_runner(model, max(bs for bs, _ in cases), tokens)
    names = list(VARIANTS)
    if args.cpu_smoke:
        names = [n for n in names if not n.endswith("_pdl")]
    inner, reps = (1, 2) if args.cpu_smoke else (10, 9)
    out: dict[str, Any] = {"model": model, "cases": {}}
    fb, rows = None, []
    for bs, ctx in cases:
        runner.allocator.clear()
        for row in rows:
            runner.req_to_token_pool.free(row)
        fb, rows = decode_batch(runner, bs, ctx)
        key = f"bs{bs}_ctx{ctx}"
        case_out: dict[str, Any] = {}
        reference = None
        for name in names:
            with variant(name):
                fn = backbone_fn(runner, fb)
                replay = graph_of(fn)
                hidden = fn().float()
                reference = hidden if reference is None else reference
                rel = float((hidden - reference).norm() / reference.norm())
                t = time_ms(replay, inner, reps)
                again = time_ms(replay, inner, reps)  # the same version twice: the noise
                del replay
            case_out[name] = {"ms": t, "ms_again": again, "rel_diff_vs_first": rel,
                              "decode_splits": runner.attn_backend.decode_num_splits(bs)}
            print(f"{model:<11} {key:<14} {name:<13} {t['median'] * 1e3:8.1f} us "
                  f"(again {again['median'] * 1e3:8.1f}) rel diff {rel:.2e}", flush=True)
        out["cases"][key] = case_out
    # lm_head + float() as the runner does after the graph (bs=1)
    hidden = torch.randn(1, runner.model_config.hidden_size, device=runner.device,
                         dtype=next(runner.model.parameters()).dtype)
    for name in ("fused_decode", "gemv", "gemv_pdl"):
        if name in names:
            with variant(name):
                t = time_ms(graph_of(lambda: runner.model.compute_logits(hidden).float()),
                            inner, reps)
            out[f"lm_head_ms_{name}"] = t
            print(f"{model:<11} lm_head+float bs=1 ({name}) {t['median'] * 1e3:8.1f} us")
    if CUDA and not args.cpu_smoke:  # last: the profiler slows later replays
        profiles = [(1, args.ctx, ("fused_decode", "gemv_pdl")),
                    (args.batch, args.ctx, ("fused_decode",))]
        for bs, ctx, which in profiles:
            if bs != 1:
                runner.allocator.clear()
                for row in rows:
                    runner.req_to_token_pool.free(row)
                fb, rows = decode_batch(runner, bs, ctx)
            for name in which:
                with variant(name):
                    replay = graph_of(backbone_fn(runner, fb))
                    out["cases"][f"bs{bs}_ctx{ctx}"][name]["kernels"] = kernel_profile(replay, 10)
                    del replay
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["gemv", "variants"])
    parser.add_argument("--model", default="qwen3-0.6b")
    parser.add_argument("--ctx", type=int, default=160, help="context of the bs=1 step")
    parser.add_argument("--long-ctx", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--out", required=True)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    if not CUDA and not args.cpu_smoke:
        raise SystemExit("needs a GPU (or --cpu-smoke)")
    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        # the interpreter needs the numpy >= 2.4 fix the attention tests install
        sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "attention")]
        import test_triton_attention  # noqa: F401
    torch.manual_seed(0)
    with torch.inference_mode():
        result = gemv_sweep(args) if args.what == "gemv" else run_variants(args)
    result["device"] = torch.cuda.get_device_name() if CUDA else "cpu"
    result["torch"] = torch.__version__
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2, default=str)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
