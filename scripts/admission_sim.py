"""Issue 30's offline workload scaled down on the CPU, to watch admission and retraction without a
GPU: N requests sent at once with input U[1, 256] and output U[1, 128] tokens (ignore_eos, greedy),
the H100 llama3-8b run's 4096 / 2048 and ~400k-token KV pool divided by 16, on the built-in
tiny-llama. The scheduler is the one the GPU runs; only the model is small. Prints the steps, the
most requests running at once and the retractions (in all, requests retracted, most for one).

    python scripts/admission_sim.py [--num-requests 500] [--kv-cache-tokens 25000]
"""
from __future__ import annotations

import argparse
import collections
import random
import time

from tessera import LLM, SamplingParams


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-requests", type=int, default=500)
    parser.add_argument("--kv-cache-tokens", type=int, default=25000)
    parser.add_argument("--max-running-requests", type=int, default=256)
    parser.add_argument("--chunked-prefill-size", type=int, default=512)
    args = parser.parse_args()
    rng = random.Random(0)
    llm = LLM(model="tiny-llama", device="cpu", kv_cache_tokens=args.kv_cache_tokens,
              max_running_requests=args.max_running_requests,
              chunked_prefill_size=args.chunked_prefill_size)
    engine = llm.engine
    retract = engine.scheduler.retract
    per_request: collections.Counter[str] = collections.Counter()

    def counting_retract(req, *a, **k):
        per_request[req.rid] += 1
        return retract(req, *a, **k)

    engine.scheduler.retract = counting_retract
    for _ in range(args.num_requests):
        prompt = [rng.randrange(3, 300) for _ in range(rng.randint(1, 256))]
        engine.add_request(prompt, SamplingParams(max_new_tokens=rng.randint(1, 128),
                                                  ignore_eos=True, temperature=0.0))
    start, steps, most_running = time.time(), 0, 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
        most_running = max(most_running, len(engine.scheduler.running))
    stats = engine.stats()
    print(f"{args.num_requests} requests, KV pool {args.kv_cache_tokens} tokens: {steps} steps "
          f"in {time.time() - start:.0f} s, at most {most_running} running, retractions "
          f"{stats['num_retractions']}, requests retracted {len(per_request)}, most for one "
          f"{max(per_request.values(), default=0)}")


if __name__ == "__main__":
    main()
