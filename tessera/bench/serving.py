"""Online serving benchmark: a load generator for any OpenAI-compatible server.

    tessera bench serving --port 30000 --dataset random --num-prompts 200 \
        --random-input-len 512 --random-output-len 128 --random-range-ratio 1.0 --max-concurrency 32

Requests stream from `/v1/completions` with `ignore_eos` and `max_tokens`, so output lengths are
exact; token counts come from the server's `usage` (stream_options.include_usage). Without a
tokenizer on the client, prompt lengths are hit by calibrating words -> tokens against the server
(two probe requests) and are reported as the server counted them. Arrivals are Poisson at
`--request-rate` (inf: all at once), optionally capped by `--max-concurrency`.
Reports request/s, input and output tok/s, and TTFT / TPOT / ITL / E2E mean, median and p99.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import sys
import time
from typing import Any

import httpx
import numpy as np

# Common four-letter words: each is one token (with its leading space) in the usual BPE
# vocabularies and five in a byte-level one, so tokens are linear in words and the calibration fit
# is exact rather than noisy.
_WORDS = ("time", "year", "work", "hand", "part", "case", "week", "life", "home", "room", "fact",
          "book", "word", "side", "kind", "head", "name", "team", "idea", "body", "face", "door",
          "hour", "game", "line", "mind", "food", "land", "road", "plan", "fire", "cost", "girl",
          "town", "tree", "ship", "farm", "bank", "club", "ball", "card", "rock", "rain", "snow",
          "wind", "star", "moon", "song", "film", "page", "step", "view", "unit", "wall", "hill",
          "lake", "king", "gold", "iron", "salt", "milk", "rice", "fish", "bird")


@dataclasses.dataclass
class BenchRequest:
    prompt: str
    output_len: int
    target_input_len: int


@dataclasses.dataclass
class RequestResult:
    ok: bool = False
    error: str = ""
    input_len: int = 0
    output_len: int = 0
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = dataclasses.field(default_factory=list)


# ---- workload ---------------------------------------------------------------------------------
@dataclasses.dataclass
class LengthModel:
    """tokens ~= intercept + slope * words, measured against the server's tokenizer."""
    intercept: float
    slope: float

    def words_for(self, tokens: int) -> int:
        return max(1, round((tokens - self.intercept) / self.slope))

    def tokens_for(self, words: int) -> int:
        return max(1, round(self.intercept + self.slope * words))


def random_text(rng: random.Random, num_words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(num_words))


async def calibrate(http: httpx.AsyncClient, url: str, model: str) -> LengthModel:
    rng = random.Random(0)
    counts = []
    for words in (64, 512):
        body = {"model": model, "prompt": random_text(rng, words), "max_tokens": 1}
        r = await http.post(url, json=body)
        r.raise_for_status()
        counts.append((words, r.json()["usage"]["prompt_tokens"]))
    (w0, t0), (w1, t1) = counts
    slope = max((t1 - t0) / (w1 - w0), 1e-3)
    return LengthModel(intercept=t0 - slope * w0, slope=slope)


def sample_lengths(rng: random.Random, length: int, ratio: float, n: int) -> list[int]:
    """SGLang's semantics: uniform in [length * ratio, length] (ratio 1.0: exactly `length`)."""
    low = max(1, int(length * ratio))
    return [rng.randint(low, length) for _ in range(n)]


def random_requests(args: argparse.Namespace, lengths: LengthModel) -> list[BenchRequest]:
    rng = random.Random(args.seed)
    ins = sample_lengths(rng, args.random_input_len, args.random_range_ratio, args.num_prompts)
    outs = sample_lengths(rng, args.random_output_len, args.random_range_ratio, args.num_prompts)
    return [BenchRequest(random_text(rng, lengths.words_for(i)), o, i) for i, o in zip(ins, outs)]


def sharegpt_requests(args: argparse.Namespace, lengths: LengthModel) -> list[BenchRequest]:
    if not args.dataset_path:
        raise SystemExit("--dataset sharegpt needs --dataset-path (a ShareGPT JSON file)")
    with open(args.dataset_path) as f:
        data = json.load(f)
    rng = random.Random(args.seed)
    rng.shuffle(data)
    out: list[BenchRequest] = []
    for entry in data:
        turns = entry.get("conversations") or entry.get("conversation") or []
        if len(turns) < 2:
            continue
        prompt, reply = turns[0].get("value", ""), turns[1].get("value", "")
        in_len = lengths.tokens_for(len(prompt.split()))
        out_len = args.sharegpt_output_len or lengths.tokens_for(len(reply.split()))
        if in_len < 4 or out_len < 4 or in_len > 1024 or in_len + out_len > 2048:
            continue  # the same filter as vLLM's and SGLang's benchmarks
        out.append(BenchRequest(prompt, out_len, in_len))
        if len(out) == args.num_prompts:
            break
    if len(out) < args.num_prompts:
        print(f"warning: only {len(out)} usable ShareGPT conversations", file=sys.stderr)
    return out


# ---- one request --------------------------------------------------------------------------------
async def send(http: httpx.AsyncClient, url: str, model: str, req: BenchRequest
               ) -> RequestResult:
    body = {"model": model, "prompt": req.prompt, "max_tokens": req.output_len,
            "temperature": 0.0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    res = RequestResult(input_len=req.target_input_len)
    start = last = time.perf_counter()
    chunks = 0
    try:
        async with http.stream("POST", url, json=body) as r:
            if r.status_code != 200:
                res.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return res
            async for line in r.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if "error" in msg:
                    res.error = str(msg["error"])[:200]
                    return res
                now = time.perf_counter()
                if msg.get("choices") and msg["choices"][0].get("text"):
                    if chunks == 0:
                        res.ttft = now - start
                    else:
                        res.itl.append(now - last)
                    chunks += 1
                    last = now
                if msg.get("usage"):
                    res.input_len = msg["usage"]["prompt_tokens"]
                    res.output_len = msg["usage"]["completion_tokens"]
    except (httpx.HTTPError, json.JSONDecodeError) as e:
        res.error = f"{type(e).__name__}: {e}"
        return res
    res.latency = time.perf_counter() - start
    res.output_len = res.output_len or chunks
    res.ok = chunks > 0
    if not res.ok:
        res.error = "no tokens received"
    return res


# ---- the run ------------------------------------------------------------------------------------
async def run(args: argparse.Namespace) -> dict[str, Any]:
    base = args.base_url or f"http://{args.host}:{args.port}"
    url = base.rstrip("/") + "/v1/completions"
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(timeout=httpx.Timeout(args.timeout), limits=limits,
                                 headers=headers) as http:
        model = args.model
        if model is None:
            r = await http.get(base.rstrip("/") + "/v1/models")
            r.raise_for_status()
            model = r.json()["data"][0]["id"]
        lengths = await calibrate(http, url, model)
        requests = (random_requests if args.dataset == "random" else sharegpt_requests)(
            args, lengths)
        for _ in range(args.warmup_requests):
            await send(http, url, model, BenchRequest(random_text(random.Random(1), 16), 4, 16))
        rng = np.random.default_rng(args.seed)
        gate = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None

        async def one(req: BenchRequest) -> RequestResult:
            if gate is None:
                return await send(http, url, model, req)
            async with gate:
                return await send(http, url, model, req)

        start = time.perf_counter()
        profiling = (asyncio.create_task(start_profile(http, base, args))
                     if args.profile else None)
        tasks = []
        for req in requests:
            tasks.append(asyncio.create_task(one(req)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.exponential(1.0 / args.request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        trace = await stop_profile(http, base, profiling) if profiling is not None else None
    summary = summarize(args, base, model, results, duration)
    if args.profile:
        summary["profile_trace"] = trace
    return summary


async def start_profile(http: httpx.AsyncClient, base: str, args: argparse.Namespace) -> None:
    """--profile: after --profile-start-s seconds of the workload, the server traces the next
    --profile-steps engine steps (POST /start_profile; tessera.engine.profiler)."""
    await asyncio.sleep(args.profile_start_s)
    r = await http.post(base.rstrip("/") + "/start_profile",
                        json={"num_steps": args.profile_steps})
    r.raise_for_status()


async def stop_profile(http: httpx.AsyncClient, base: str, profiling: asyncio.Task
                       ) -> str | None:
    """The trace's path on the server (stopped here if the workload ended first)."""
    if not profiling.done():
        profiling.cancel()
        return None
    profiling.result()  # a refused start raises here
    r = await http.post(base.rstrip("/") + "/stop_profile")
    r.raise_for_status()
    return r.json().get("trace")


def _dist_ms(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "median": 0.0, "p99": 0.0}
    a = np.asarray(values) * 1000
    return {"mean": float(a.mean()), "median": float(np.median(a)),
            "p99": float(np.percentile(a, 99))}


def summarize(args: argparse.Namespace, base: str, model: str, results: list[RequestResult],
              duration: float) -> dict[str, Any]:
    ok = [r for r in results if r.ok]
    total_in = sum(r.input_len for r in ok)
    total_out = sum(r.output_len for r in ok)
    tpot = [(r.latency - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    return {
        "backend": args.backend, "base_url": base, "model": model, "dataset": args.dataset,
        "num_prompts": len(results),
        "request_rate": args.request_rate if np.isfinite(args.request_rate) else "inf",
        "max_concurrency": args.max_concurrency, "duration_s": duration,
        "completed": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "total_input_tokens": total_in, "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "input_throughput": total_in / duration, "output_throughput": total_out / duration,
        "total_throughput": (total_in + total_out) / duration,
        "concurrency": sum(r.latency for r in ok) / duration,
        "ttft_ms": _dist_ms([r.ttft for r in ok]), "tpot_ms": _dist_ms(tpot),
        "itl_ms": _dist_ms([x for r in ok for x in r.itl]),
        "e2e_latency_ms": _dist_ms([r.latency for r in ok]),
    }


def print_table(s: dict[str, Any]) -> None:
    rows = [("Backend", s["backend"]), ("Model", s["model"]),
            ("Traffic request rate", s["request_rate"]),
            ("Max request concurrency", s["max_concurrency"] or "-"),
            ("Successful requests", s["completed"]), ("Failed requests", s["failed"]),
            ("Benchmark duration (s)", f"{s['duration_s']:.2f}"),
            ("Total input tokens", s["total_input_tokens"]),
            ("Total generated tokens", s["total_output_tokens"]),
            ("Request throughput (req/s)", f"{s['request_throughput']:.2f}"),
            ("Input token throughput (tok/s)", f"{s['input_throughput']:.2f}"),
            ("Output token throughput (tok/s)", f"{s['output_throughput']:.2f}"),
            ("Concurrency", f"{s['concurrency']:.2f}")]
    for key, title in (("ttft_ms", "TTFT"), ("tpot_ms", "TPOT"), ("itl_ms", "ITL"),
                       ("e2e_latency_ms", "E2E latency")):
        for stat in ("mean", "median", "p99"):
            rows.append((f"{stat.capitalize()} {title} (ms)", f"{s[key][stat]:.2f}"))
    print(f"{' Serving Benchmark Result ':=^60}")
    for name, value in rows:
        print(f"{name:<42}{value!s:>18}")
    print("=" * 60)
    for err in s["errors"]:
        print(f"error: {err}")
    if "profile_trace" in s:
        print(f"profile trace (on the server): {s['profile_trace'] or 'none: the workload ended before it started'}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tessera bench serving", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-url", default=None, help="e.g. http://127.0.0.1:30000 (overrides "
                   "--host/--port)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--backend", default="openai-completions", choices=["openai-completions"])
    p.add_argument("--model", default=None, help="default: the first of /v1/models")
    p.add_argument("--api-key", default=None)
    p.add_argument("--dataset", default="random", choices=["random", "sharegpt"])
    p.add_argument("--dataset-path", default=None)
    p.add_argument("--num-prompts", type=int, default=200)
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=128)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="lengths uniform in [len * ratio, len]; 1.0 = exact")
    p.add_argument("--sharegpt-output-len", type=int, default=None,
                   help="override the output length of ShareGPT requests")
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="requests/s, Poisson arrivals; inf sends all at once")
    p.add_argument("--max-concurrency", type=int, default=None)
    p.add_argument("--warmup-requests", type=int, default=1)
    p.add_argument("--timeout", type=float, default=3600.0, help="per-request timeout (s)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output-file", default=None, help="write the results as JSON here")
    p.add_argument("--profile", action="store_true",
                   help="have the server write a torch-profiler trace of --profile-steps engine "
                        "steps (its path is in the results; see POST /start_profile)")
    p.add_argument("--profile-steps", type=int, default=50)
    p.add_argument("--profile-start-s", type=float, default=5.0,
                   help="seconds into the workload the trace starts (past the ramp-up)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.num_prompts < 1 or (args.max_concurrency is not None and args.max_concurrency < 1):
        raise SystemExit("--num-prompts and --max-concurrency must be >= 1")
    if args.request_rate <= 0:
        raise SystemExit("--request-rate must be > 0 (inf: all at once)")
    if args.profile_steps < 1 or args.profile_start_s < 0:
        raise SystemExit("--profile-steps must be >= 1 and --profile-start-s >= 0")
    if not 0.0 <= args.random_range_ratio <= 1.0:
        raise SystemExit("--random-range-ratio must be in [0, 1]")
    summary = asyncio.run(run(args))
    print_table(summary)
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump({**summary, "args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S")},
                      f, indent=2, default=str)
    return 0 if summary["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
