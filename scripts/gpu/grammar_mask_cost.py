"""Cost of grammar-masked decoding: engine decode step time at one batch size with and without
an xgrammar constraint on every request, plus its two parts measured alone (the host's batched
bitmask fill, the device's tessera::apply_token_bitmask).

Every request decodes a fixed number of tokens (ignore_eos, and grammars that cannot complete
within them), so both runs time the same steady decode batch. Presets have random weights and the
built-in byte tokenizer (a vocabulary of single characters, the model's full 151936 ids): the mask
work is that of the real vocabulary size, whatever the text.

Usage (GPU, repo root; PYTHONPATH=. unless tessera is installed):
              python scripts/gpu/grammar_mask_cost.py --model-path qwen3-0.6b --batch-size 32
              [--steps 200] [--output grammar_mask_cost.json] [--profile-steps 20]
CPU check:    python scripts/gpu/grammar_mask_cost.py --model-path tiny-qwen3 --batch-size 4 \
                  --steps 5 --warmup 2 --prompt-len 8
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from tessera import LLM, SamplingParams

GRAMMARS = {
    "none": {},
    "regex": {"regex": "[a-z ]{8192}"},
    "json_schema": {"json_schema": json.dumps({"type": "array", "minItems": 4096, "items": {
        "type": "object", "properties": {"id": {"type": "integer"}, "tag": {"enum": ["a", "b"]}},
        "required": ["id", "tag"]}})},
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def decode_step_ms(llm: LLM, grammar: dict, batch: int, prompt_len: int, warmup: int,
                   steps: int, profile_steps: int = 0) -> float:
    """Mean decode step time (ms) over `steps`; with profile_steps, the engine's
    profiler then traces that many more steps (tessera.engine.profiler; the trace path is
    logged)."""
    engine = llm.engine
    device = engine.runner.device
    rids = []
    for i in range(batch):
        prompt = [(7 * i + j) % 200 + 10 for j in range(prompt_len)]
        params = SamplingParams(max_new_tokens=warmup + steps + profile_steps + 16,
                                temperature=1.0, seed=i, ignore_eos=True, **grammar)
        rids.append(engine.add_request(prompt, params))
    reqs = [engine.requests[r] for r in rids]
    while min(len(r.output_ids) for r in reqs) < warmup:  # compile, prefill, first steps
        engine.step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(device)
    elapsed = time.perf_counter() - start
    if profile_steps:
        engine.profiler.start(profile_steps)
        for _ in range(profile_steps):
            engine.step()
        print(f"profile: {engine.profiler.last_trace}", flush=True)
    assert all(not r.finished for r in reqs), "a request finished inside the timed steps"
    for rid in rids:
        engine.abort(rid)
    while engine.has_unfinished():
        engine.step()
    return elapsed / steps * 1000


def parts_ms(llm: LLM, batch: int) -> dict[str, float]:
    """The batched host fill and the device mask op alone, medians over 50 runs."""
    engine = llm.engine
    backend = engine.grammar_backend
    device = engine.runner.device
    kind, text = next(iter(GRAMMARS["json_schema"].items()))
    grammars = [backend.request_grammar(kind, text) for _ in range(batch)]
    while not all(g.ready() for g in grammars):
        time.sleep(0.01)
    fills = []
    for _ in range(50):  # what the engine calls per step: its host buffer, reset, filled
        t = time.perf_counter()
        bitmask = backend.batch_bitmask(batch, list(range(batch)), grammars,
                                        pin=device.type == "cuda")
        fills.append((time.perf_counter() - t) * 1000)
    logits = torch.randn(batch, engine.vocab_size, device=device)
    mask = bitmask.to(device)
    applies = []
    for _ in range(50):
        sync(device)
        t = time.perf_counter()
        torch.ops.tessera.apply_token_bitmask(logits, mask)
        sync(device)
        applies.append((time.perf_counter() - t) * 1000)
    return {"host_fill_ms": statistics.median(fills),
            "device_apply_ms": statistics.median(applies)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model-path", default="qwen3-0.6b")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=16)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output", default=None)
    ap.add_argument("--profile-steps", type=int, default=0,
                    help="after each timed run, trace this many steps (torch profiler; "
                         "scripts/gpu/trace_summary.py reads the traces)")
    args = ap.parse_args()
    llm = LLM(args.model_path)
    result: dict = {"model": args.model_path, "batch_size": args.batch_size,
                    "steps": args.steps, "device": str(llm.engine.runner.device)}
    # warm-up (graphs, allocator, kernels' first launches), not reported
    decode_step_ms(llm, {}, args.batch_size, args.prompt_len, args.warmup, min(args.steps, 20))
    for name, grammar in GRAMMARS.items():
        result[f"step_ms_{name}"] = decode_step_ms(llm, grammar, args.batch_size,
                                                   args.prompt_len, args.warmup, args.steps,
                                                   args.profile_steps)
    base = result["step_ms_none"]
    for name in GRAMMARS:
        if name != "none":
            result[f"overhead_pct_{name}"] = (result[f"step_ms_{name}"] - base) / base * 100
    result.update(parts_ms(llm, args.batch_size))
    print(json.dumps(result, indent=2))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
    llm.shutdown()


if __name__ == "__main__":
    main()
