"""Host time of the engine's step parts with many requests decoding: `Scheduler.schedule`,
`Engine._sample` and `Engine._process` (reading the step before), medians over a run of steps.

On the CPU the model is the built-in tiny-llama, so `_sample` includes the CPU's own sampling
work, but `schedule` and `_process` are the host work a GPU step has too (batch building, slot
allocation, appending tokens, detokenizing, finish checks): what a large decode batch costs the
host per step, to compare two trees on one machine.

    python scripts/host_step_cost.py [--batch-size 256] [--steps 40] [--model-path tiny-llama]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from tessera import LLM, SamplingParams


def timed(times: list[float], fn):
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        times.append((time.perf_counter() - start) * 1e3)
        return result
    return wrapper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default="tiny-llama")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--prompt-len", type=int, default=64)
    args = parser.parse_args()
    llm = LLM(args.model_path, max_running_requests=args.batch_size,
              kv_cache_tokens=args.batch_size * (args.prompt_len + args.steps + 64))
    engine = llm.engine
    for i in range(args.batch_size):
        engine.add_request([5 + i % 50] * args.prompt_len, SamplingParams(
            max_new_tokens=args.steps + 32, temperature=1.0, seed=i, ignore_eos=True))
    for _ in range(8):  # prefill and the first decode steps
        engine.step()
    times: dict[str, list[float]] = {"schedule": [], "sample": [], "process": []}
    engine.scheduler.schedule = timed(times["schedule"], engine.scheduler.schedule)
    engine._sample = timed(times["sample"], engine._sample)
    engine._process = timed(times["process"], engine._process)
    for _ in range(args.steps):
        engine.step()
    running = len(engine.scheduler.running)
    llm.shutdown()
    print(json.dumps({"model": args.model_path, "running": running, "steps": args.steps,
                      **{f"{k}_ms": round(statistics.median(v), 3) for k, v in times.items()}}))


if __name__ == "__main__":
    main()
