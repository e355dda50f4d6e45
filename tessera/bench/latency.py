"""`tessera bench latency`: the cost of one batch through the engine's forward.

For each (batch size B, input length I, output length O): B requests of I random tokens are
prefilled as one extend batch, then decoded greedily (EOS ignored) for O - 1 steps: the prefill
produces the first of the O output tokens, as in SGLang's bench_one_batch. ModelRunner + Sampler
are driven directly (no scheduler, tokenizer or detokenizer), so the figures are the engine's
forward cost plus what every engine step pays around it: allocating the new KV slots, building
the ForwardBatch, sampling and reading the tokens back to the host (the forward itself records
the slots in req_to_token, as in the engine). Each timed region ends with that
read (the step's one device->host sync) and a platform synchronize before the clock is read.
Decode runs as the engine's schedule does: by default overlapped (step n + 1 launched, its input
ids taken on the device, before step n's tokens are read; a step's time is then the interval
between two token reads), with `--disable-overlap-schedule` one step after the other.

`--compare hf` builds an HF transformers model of the same shape holding the SAME weights (copied
from tessera's model, q/k/v and gate/up un-merged; built on the meta device so nothing is
initialised twice) and times its prefill and eager decode (use_cache, past_key_values) on the same
tokens in the same run. A logits check guards the copy: the HF and tessera first-token logits are
reported side by side.

    tessera bench latency --model-path llama3-8b --batch-size 1 32 --input-len 128 \\
        --output-len 128 --compare hf --out result.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from tessera.bench.timing import RunTimes

if TYPE_CHECKING:
    from tessera.bench.hf_reference import HFLatency
    from tessera.config import EngineConfig
    from tessera.forward.batch import ForwardBatch
    from tessera.runner.model_runner import ModelRunner

logger = logging.getLogger(__name__)


# ---- figures ------------------------------------------------------------------------------------
def summarize(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples), "max": max(samples),
            "n": len(samples)}


def per_second(ms: dict[str, float], amount: float) -> dict[str, float]:
    """`amount` per second from a time summary in ms (the fastest time gives the max rate)."""
    return {"median": amount * 1e3 / ms["median"], "min": amount * 1e3 / ms["max"],
            "max": amount * 1e3 / ms["min"]}


def measure(run: Callable[[list[list[int]], int], RunTimes], prompts: list[list[int]],
            output_len: int, warmup: int, repeat: int) -> tuple[dict[str, Any], RunTimes]:
    for _ in range(warmup):
        run(prompts, output_len)
    runs = [run(prompts, output_len) for _ in range(repeat)]
    bs, input_len = len(prompts), len(prompts[0])
    prefill = summarize([r.prefill_ms for r in runs])
    figures: dict[str, Any] = {"prefill_ms": prefill,
                               "prefill_tok_s": per_second(prefill, bs * input_len),
                               "decode_ms_per_step": None, "decode_tok_s": None,
                               "e2e_ms": summarize([r.prefill_ms + sum(r.decode_ms)
                                                    for r in runs])}
    if output_len > 1:
        decode = summarize([ms for r in runs for ms in r.decode_ms])
        figures["decode_ms_per_step"] = decode
        figures["decode_tok_s"] = per_second(decode, bs)
        device = [ms for r in runs for ms in r.decode_forward_ms]
        if device:
            figures["decode_forward_device_ms"] = summarize(device)
    return figures, runs[0]


# ---- tessera --------------------------------------------------------------------------------------
class TesseraLatency:
    """Runs one case on a ModelRunner the way an engine step does, minus the scheduler."""

    def __init__(self, runner: ModelRunner) -> None:
        from tessera.sampling.sampler import Sampler

        self.runner = runner
        self.platform = runner.platform
        # mirror the engine: with its overlap schedule, decode step n + 1 is launched before
        # step n's tokens are read (--disable-overlap-schedule: every step read first)
        self.overlap = not runner.config.scheduler.disable_overlap_schedule
        self.sampler = Sampler(backend=runner.config.backend.sampling_backend)
        # two timing events, reused every step (None on platforms without device events)
        self.events = (self.platform.event(enable_timing=True),
                       self.platform.event(enable_timing=True))

    def _decode_overlapped(self, times: RunTimes, rows: list[int], tokens: torch.Tensor,
                           seq_len: int, steps: int, info: Any) -> None:
        """The decode steps as the engine's overlap schedule runs them: step n + 1 is launched
        (its input ids taken on the device from step n's sampled tokens) before step n's tokens
        are read. A step's time is the interval between two consecutive token reads."""
        from tessera.forward.batch import ForwardBatch, ForwardMode
        from tessera.platforms.transfer import to_host_async

        runner, platform = self.runner, self.platform
        bs = len(rows)
        order = list(range(bs))
        # per step in flight: (host tokens, copy-done event, forward start/end events)
        in_flight: list[tuple[torch.Tensor, Any, Any, Any]] = []
        last_read = time.perf_counter()

        def read_oldest() -> None:
            nonlocal last_read
            host, copied, before, after = in_flight.pop(0)
            if copied is not None:
                copied.synchronize()
            times.decode_tokens.append(host.tolist())
            now = time.perf_counter()
            times.decode_ms.append((now - last_read) * 1e3)
            last_read = now
            if before is not None and after is not None:
                times.decode_forward_ms.append(before.elapsed_time(after))

        for step in range(steps):
            slots = runner.allocator.alloc(bs)
            fb = ForwardBatch.build(ForwardMode.DECODE, [0] * bs, rows, [seq_len] * bs, [1] * bs,
                                    slots, runner.device)
            fb.fill_input_ids(order, tokens, order)
            before, after = (platform.event(enable_timing=True),
                             platform.event(enable_timing=True))
            if before is not None:
                before.record()
            out = runner.forward(fb)
            if after is not None:
                after.record()
            tokens = self.sampler.sample(out.next_token_logits, info, out.greedy_tokens).token_ids
            (host,), copied = to_host_async(platform, tokens)
            in_flight.append((host, copied, before, after))
            if step == 0:
                times.decode_path = self._path(fb)
            if len(in_flight) > 1:
                read_oldest()
            seq_len += 1
        while in_flight:
            read_oldest()
        platform.synchronize()

    def _greedy_info(self, bs: int):
        # Built once per run, outside the clock: greedy needs no per-step sampling state, and the
        # engine's per-step rebuild is host work of the scheduler loop, not of the forward.
        from tessera.sampling.params import SamplingParams
        from tessera.sampling.sampler import SamplingBatchInfo

        params = SamplingParams(temperature=0.0, ignore_eos=True)
        return SamplingBatchInfo.build(params=[params] * bs, seeds=[0] * bs, step_ids=[0] * bs,
                                       output_ids=None, prompt_ids=None,
                                       vocab_size=self.runner.model_config.vocab_size,
                                       device=self.runner.device)

    def _path(self, fb: ForwardBatch) -> str:
        for graph_runner in self.runner.graph_runners:
            if graph_runner.can_run(fb):
                return type(graph_runner).__name__
        return "eager"

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], output_len: int) -> RunTimes:
        from tessera.forward.batch import ForwardBatch, ForwardMode

        runner, sync = self.runner, self.platform.synchronize
        before, after = self.events
        bs, input_len = len(prompts), len(prompts[0])
        rows = [runner.req_to_token_pool.alloc() for _ in range(bs)]
        assert None not in rows, "the bench sizes max_running_requests to the batch"
        info = self._greedy_info(bs)
        flat = [t for p in prompts for t in p]
        try:
            sync()
            start = time.perf_counter()
            slots = runner.allocator.alloc(bs * input_len)
            assert slots is not None, "the bench sizes the KV pool to the largest case"
            fb = ForwardBatch.build(ForwardMode.EXTEND, flat, rows, [0] * bs, [input_len] * bs,
                                    slots, runner.device)
            logits = runner.forward(fb).next_token_logits
            tokens_dev = self.sampler.sample(logits, info).token_ids
            tokens = tokens_dev.tolist()
            sync()
            prefill_ms = (time.perf_counter() - start) * 1e3
            times = RunTimes(prefill_ms, [], logits, prefill_path=self._path(fb))
            seq_len = input_len
            if self.overlap and output_len > 1:
                self._decode_overlapped(times, rows, tokens_dev, seq_len, output_len - 1, info)
                return times
            for step in range(output_len - 1):
                start = time.perf_counter()
                slots = runner.allocator.alloc(bs)
                fb = ForwardBatch.build(ForwardMode.DECODE, tokens, rows, [seq_len] * bs,
                                        [1] * bs, slots, runner.device)
                if before is not None:
                    before.record()
                out = runner.forward(fb)
                if after is not None:
                    after.record()
                tokens = self.sampler.sample(out.next_token_logits, info,
                                             out.greedy_tokens).token_ids.tolist()  # the one sync
                sync()
                times.decode_tokens.append(tokens)
                times.decode_ms.append((time.perf_counter() - start) * 1e3)
                if before is not None and after is not None:
                    times.decode_forward_ms.append(before.elapsed_time(after))
                if step == 0:
                    times.decode_path = self._path(fb)
                seq_len += 1
            return times
        finally:
            for row in rows:
                runner.req_to_token_pool.free(row)
            runner.allocator.clear()  # the bench owns the whole pool: every slot is free again


# ---- CLI ----------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    batch_size: int
    input_len: int
    output_len: int


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from tessera.config import EngineConfig

    parser = argparse.ArgumentParser(prog="tessera bench latency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    g = parser.add_argument_group("benchmark options")
    g.add_argument("--batch-size", type=int, nargs="+", default=[1])
    g.add_argument("--input-len", type=int, nargs="+", default=[128])
    g.add_argument("--output-len", type=int, nargs="+", default=[32],
                   help="output tokens per request, the prefill's included (O - 1 decode steps)")
    g.add_argument("--compare", choices=["hf"], default=None,
                   help="also time HF transformers (eager) on the same weights and tokens")
    g.add_argument("--warmup", type=int, default=1, help="untimed runs per case")
    g.add_argument("--repeat", type=int, default=3, help="timed runs per case")
    g.add_argument("--out", default=None, help="write the results as JSON here")
    # these two register their backends as CLI choices
    import tessera.attention
    import tessera.sampling.ops  # noqa: F401
    EngineConfig.add_cli_args(parser)
    return parser.parse_args(argv)


def bench_config(args: argparse.Namespace, cases: list[Case], argv: list[str]) -> EngineConfig:
    """Size the engine to the cases: request rows (and so decode graphs) up to the largest batch
    unless --max-running-requests is given; a KV pool of exactly what the largest case needs
    unless --kv-cache-tokens is given (the rest of the memory stays free, e.g. for HF)."""
    from tessera.config import EngineConfig

    config = EngineConfig.from_cli(args)
    max_bs = max(c.batch_size for c in cases)
    need = max(c.batch_size * (c.input_len + c.output_len) for c in cases)
    sched, cache = config.scheduler, config.cache
    if any(a.startswith("--max-running-requests") for a in argv):
        if sched.max_running_requests < max_bs:
            raise ValueError(f"--max-running-requests {sched.max_running_requests} is below "
                             f"--batch-size {max_bs}")
    else:
        sched = dataclasses.replace(sched, max_running_requests=max_bs)
    if cache.kv_cache_tokens is None:
        cache = dataclasses.replace(cache, kv_cache_tokens=need)
    elif cache.kv_cache_tokens < need:
        raise ValueError(f"--kv-cache-tokens {cache.kv_cache_tokens} is below the {need} tokens "
                         f"the largest case needs (batch x (input + output)); raise it")
    return dataclasses.replace(config, scheduler=sched, cache=cache)


def git_info() -> dict[str, Any]:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=root, text=True,
                                         stderr=subprocess.DEVNULL).strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"],
                                        cwd=root, text=True, stderr=subprocess.DEVNULL).strip()
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": "unknown", "git_dirty": None}
    return {"git_commit": commit, "git_dirty": bool(dirty)}


def _fmt(figure: dict[str, float] | None, key: str = "median") -> str:
    return "-" if figure is None else f"{figure[key]:.2f}"


def print_table(title: str, results: list[dict[str, Any]], compare: bool) -> None:
    head = (f"{'bs':>5} {'in':>6} {'out':>5} | {'prefill ms':>10} {'tok/s':>10} | "
            f"{'decode ms/step':>14} {'tok/s':>9} | {'decode path':<18}")
    if compare:
        head += f" | {'HF prefill':>10} {'HF decode':>9} | {'x prefill':>9} {'x decode':>8}"
    print(title)
    print(head)
    print("-" * len(head))
    for r in results:
        line = (f"{r['batch_size']:>5} {r['input_len']:>6} {r['output_len']:>5} | "
                f"{_fmt(r['prefill_ms']):>10} {_fmt(r['prefill_tok_s']):>10} | "
                f"{_fmt(r['decode_ms_per_step']):>14} {_fmt(r['decode_tok_s']):>9} | "
                f"{r['decode_path'] or '-':<18}")
        if compare:
            hf, x = r["hf"], r["speedup_vs_hf"]
            x_decode = "-" if x["decode"] is None else f"{x['decode']:.2f}"
            line += (f" | {_fmt(hf['prefill_ms']):>10} {_fmt(hf['decode_ms_per_step']):>9} | "
                     f"{x['prefill']:>9.2f} {x_decode:>8}")
        print(line)


def _speedup(hf: dict[str, float] | None, ours: dict[str, float] | None) -> float | None:
    return None if hf is None or ours is None else hf["median"] / ours["median"]


def run_case(case: Case, prompts: list[list[int]], ours: TesseraLatency, warmup: int,
             repeat: int) -> tuple[dict[str, Any], torch.Tensor]:
    """tessera's figures for one case, and its first-token logits (for the HF check)."""
    figures, first = measure(ours.run, prompts, case.output_len, warmup, repeat)
    result: dict[str, Any] = {**dataclasses.asdict(case), **figures,
                              "prefill_path": first.prefill_path,
                              "decode_path": first.decode_path if case.output_len > 1 else None}
    return result, first.first_logits.cpu()


def add_hf_case(result: dict[str, Any], first_logits: torch.Tensor, prompts: list[list[int]],
                hf: HFLatency, warmup: int, repeat: int) -> None:
    from tessera.bench.hf_reference import logits_check

    hf_figures, hf_first = measure(hf.run, prompts, result["output_len"], warmup, repeat)
    result["hf"] = hf_figures
    result["hf_check"] = logits_check(first_logits, hf_first.first_logits.cpu())
    result["speedup_vs_hf"] = {
        "prefill": _speedup(hf_figures["prefill_ms"], result["prefill_ms"]),
        "decode": _speedup(hf_figures["decode_ms_per_step"], result["decode_ms_per_step"])}


def build_hf(runner: ModelRunner, ours: TesseraLatency, model_path: str
             ) -> tuple[HFLatency, str]:
    """The HF model for --compare hf, and how it was placed: beside the runner when both copies
    of the weights fit, else ("sequential") after a host copy of the weights was taken and the
    runner's device memory (weights, KV pool, graphs) released: a 30B MoE in bf16 does not fit
    twice on one 80 GB GPU. tessera's cases have all run by then."""
    import gc

    from tessera.bench.hf_reference import HFLatency, fits_beside, tessera_state_for_hf

    if fits_beside(runner):
        return HFLatency(runner, model_path), "beside"
    logger.info("HF's copy of the weights does not fit beside tessera's: releasing tessera's "
                "device memory first (its cases are done)")
    state = tessera_state_for_hf(runner, device="cpu")
    runner.release_device_memory()
    ours.runner = None
    gc.collect()
    runner.platform.empty_cache()
    return HFLatency(runner, model_path, state=state), "sequential"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s",
                            datefmt="%H:%M:%S")
    from tessera.runner.model_runner import ModelRunner

    cases = [Case(b, i, o) for b in args.batch_size for i in args.input_len
             for o in args.output_len]
    try:
        if min(min(args.batch_size), min(args.input_len), min(args.output_len)) < 1:
            raise ValueError("--batch-size, --input-len and --output-len take values >= 1")
        if args.repeat < 1 or args.warmup < 0:
            raise ValueError("--repeat must be >= 1 and --warmup >= 0")
        config = bench_config(args, cases, argv).resolve()
        start = time.perf_counter()
        runner = ModelRunner(config)
        init_s = time.perf_counter() - start
        longest = max(c.input_len + c.output_len for c in cases)
        if longest > runner.context_length:
            raise ValueError(f"input + output length {longest} exceeds the context length "
                             f"{runner.context_length}; pass --context-length or shorter lengths")
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    ours = TesseraLatency(runner)
    gen = torch.Generator().manual_seed(config.load.seed)
    vocab = runner.model_config.vocab_size
    all_prompts = [torch.randint(0, vocab, (case.batch_size, case.input_len),
                                 generator=gen).tolist() for case in cases]
    results, first_logits = [], []
    for case, prompts in zip(cases, all_prompts):
        result, logits = run_case(case, prompts, ours, args.warmup, args.repeat)
        results.append(result)
        first_logits.append(logits)
        logger.info("done: %s", case)
    graph_capture = {type(g).__name__: {
        "seconds": getattr(g, "capture_seconds", None),
        "memory_mib": getattr(g, "capture_memory_bytes", 0) / 2**20}
        for g in runner.graph_runners}
    hf = hf_placement = None
    if args.compare == "hf":
        hf, hf_placement = build_hf(runner, ours, config.load.model_path)
        for result, logits, prompts in zip(results, first_logits, all_prompts):
            add_hf_case(result, logits, prompts, hf, args.warmup, args.repeat)
    report = {
        "benchmark": "latency", "model": config.load.model_path,
        "config": {"engine": config.flat(),
                   "bench": {"batch_size": args.batch_size, "input_len": args.input_len,
                             "output_len": args.output_len, "warmup": args.warmup,
                             "repeat": args.repeat, "compare": args.compare}},
        **git_info(), "device_name": runner.platform.device_name(),
        "torch_version": torch.__version__, "init_s": init_s,
        "graph_capture": graph_capture,
        "results": results,
    }
    if hf is not None:
        report["hf"] = {"transformers_version": hf.version,
                        "attn_implementation": hf.attn_implementation,
                        "placement": hf_placement}
    print_table(f"tessera bench latency: {config.load.model_path} on {report['device_name']} "
                f"({config.load.dtype}, attention {config.backend.attention_backend}, "
                f"init {init_s:.1f} s)", results, hf is not None)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
