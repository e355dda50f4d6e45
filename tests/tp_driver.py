"""Runs one tensor-parallel engine in a fresh process (rank 0 here, the other ranks started by
the engine) and prints a JSON result: what the TP tests compare with TP=1.

    python tests/tp_driver.py logits MODEL TP OUT.pt   # a fixed extend + decode, logits saved
    python tests/tp_driver.py generate MODEL TP '{"engine": {...}}'  # greedy token ids
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# prompts of a mixed batch: a shared prefix (radix cache), long prompts (chunked prefill)
PROMPTS = [list(range(3, 40)), list(range(3, 30)) + [7, 8, 9], [5, 6, 7],
           [11] * 50 + [12, 13], list(range(3, 40)) + [1, 2]]


def run_logits(model: str, tp: int) -> dict[str, torch.Tensor]:
    """Extend two requests (one with a 1-token prompt), then decode both: all logits."""
    from runner_driver import RunnerDriver

    from tessera.config.engine import EngineConfig
    from tessera.engine.tp import start_rank_zero
    from tessera.forward.batch import ForwardMode
    from tessera.runner.model_runner import ModelRunner

    config = EngineConfig.from_kwargs(
        model_path=model, tp_size=tp, kv_cache_tokens=512, max_running_requests=4,
        disable_cuda_graph=True, disable_piecewise_cuda_graph=True, dist_timeout=30.0).resolve()
    ranks = start_rank_zero(config) if tp > 1 else None
    try:
        runner = ModelRunner(config)
        driver = RunnerDriver(runner)
        a, b = driver.new_request(), driver.new_request()
        _, extend = driver.step([(a, [1, 17, 42, 99, 5, 8, 250]), (b, [3])])
        _, decode = driver.step([(a, [7]), (b, [9])], mode=ForwardMode.DECODE)
        _, extend2 = driver.step([(b, [4, 5, 6]), (a, [2])])
        runner.stop_other_ranks()
    finally:
        if ranks is not None:
            ranks.stop(timeout=10)
    return {"extend": extend, "decode": decode, "extend2": extend2}


def run_generate(model: str, tp: int, engine_args: dict) -> list[list[int]]:
    from tessera import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    llm = LLM(model, tp_size=tp, dist_timeout=30.0, **engine_args)
    try:
        first = llm.generate(prompt_token_ids=PROMPTS[:3], sampling_params=params)
        # the rest after: their prefixes are in the radix cache by now
        second = llm.generate(prompt_token_ids=PROMPTS[3:], sampling_params=params)
        cached = [o.num_cached_tokens for o in second]
        graphs = [type(r).__name__ for r in llm.engine.runner.graph_runners]
        retractions = llm.engine.scheduler.num_retractions
    finally:
        llm.shutdown()
    return {"tokens": [o.token_ids for o in first + second], "cached": cached,
            "graph_runners": graphs, "retractions": retractions}


def run_kill(model: str, tp: int) -> dict:
    """Kill rank 1 between two generate calls: the next one must fail with a clear error and
    leave no rank running."""
    import signal

    from tessera import LLM, SamplingParams

    params = SamplingParams(temperature=0.0, max_new_tokens=4, ignore_eos=True)
    llm = LLM(model, tp_size=tp, dist_timeout=30.0, kv_cache_tokens=512)
    llm.generate(prompt_token_ids=PROMPTS[:1], sampling_params=params)
    procs = llm.engine.tp_ranks.procs
    os.kill(procs[0].pid, signal.SIGKILL)
    try:
        llm.generate(prompt_token_ids=PROMPTS[:2], sampling_params=params)
        error = None
    except RuntimeError as e:
        error = str(e)
    return {"error": error, "alive": [p.poll() is None for p in procs],
            "stopped": llm.engine.tp_ranks is None}


if __name__ == "__main__":
    mode, model, tp = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "logits":
        torch.save(run_logits(model, tp), sys.argv[4])
        print(json.dumps({"ok": True}))
    elif mode == "kill":
        print(json.dumps(run_kill(model, tp)))
    else:
        print(json.dumps(run_generate(model, tp, json.loads(sys.argv[4]))))
