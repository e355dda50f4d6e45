"""A randomized workout of the engine on CPU: shared-prefix prompts, mixed sampling parameters,
chunked prefill, a pool small enough to retract, the radix cache, and aborts at random moments
(queued, mid-prefill, decoding). After every step no KV slot is leaked or double-freed; every
request ends exactly once with the reason it should; at the end the pool is whole again."""
from __future__ import annotations

import random

import pytest

from tessera.config import EngineConfig
from tessera.engine.engine import Engine
from tessera.sampling.params import SamplingParams


@pytest.mark.parametrize("seed,radix,extra", [
    (0, True, {}), (1, True, {}), (2, False, {}),
    (3, True, {"schedule_policy": "lpm", "max_running_requests": 4}),
    # extend batches through the split, compiled backbone (the piecewise path without capture)
    (4, True, {"enforce_piecewise_cuda_graph": True, "piecewise_cuda_graph_max_tokens": 64}),
    # every step read before the next is scheduled (the others run the overlap schedule)
    (5, True, {"disable_overlap_schedule": True}),
])
def test_random_workload_with_aborts_keeps_the_pool_whole(seed, radix, extra):
    rng = random.Random(seed)
    engine = Engine(EngineConfig.from_kwargs(**{
        "model_path": "tiny-llama", "device": "cpu", "load_format": "dummy", "seed": seed,
        "kv_cache_tokens": 900, "chunked_prefill_size": 48, "max_running_requests": 12,
        "disable_radix_cache": not radix, **extra}))
    vocab = engine.vocab_size
    prefixes = [[rng.randrange(vocab) for _ in range(rng.randint(20, 120))] for _ in range(3)]

    def new_request() -> str:
        prompt = (rng.choice(prefixes) if rng.random() < 0.7 else [])
        prompt = prompt + [rng.randrange(vocab) for _ in range(rng.randint(1, 80))]
        params = SamplingParams(
            temperature=rng.choice([0.0, 0.7, 1.0]), top_k=rng.choice([-1, 5, 50]),
            top_p=rng.choice([1.0, 0.9]), min_p=rng.choice([0.0, 0.05]),
            repetition_penalty=rng.choice([1.0, 1.2]), max_new_tokens=rng.randint(1, 40),
            ignore_eos=True, logprobs=rng.random() < 0.3)
        return engine.add_request(prompt, params)

    expected_len: dict[str, int] = {}
    live: list[str] = []
    finished: dict[str, str] = {}
    aborted: set[str] = set()
    for _ in range(20):
        rid = new_request()
        expected_len[rid] = engine.requests[rid].params.max_new_tokens
        live.append(rid)
    produced = dict.fromkeys(expected_len, 0)
    steps = 0
    while engine.has_unfinished():
        steps += 1
        assert steps < 5000, "the engine stopped making progress"
        if live and rng.random() < 0.08:  # abort someone, wherever it is
            victim = rng.choice(live)
            if engine.abort(victim):
                aborted.add(victim)
        if steps < 150 and rng.random() < 0.15:  # keep new work arriving
            rid = new_request()
            expected_len[rid] = engine.requests[rid].params.max_new_tokens
            produced[rid] = 0
            live.append(rid)
        for out in engine.step():
            assert out.rid not in finished, f"{out.rid} finished twice"
            produced[out.rid] += len(out.new_token_ids)
            if out.finished:
                finished[out.rid] = out.finish_reason
                live.remove(out.rid)
        engine.scheduler.check_kv_invariant()

    assert set(finished) == set(expected_len)
    for rid, reason in finished.items():
        if rid in aborted:
            assert reason == "abort" and produced[rid] <= expected_len[rid]
        else:
            assert reason == "length" and produced[rid] == expected_len[rid], rid
    assert aborted, "the workload should have aborted something"
    scheduler = engine.scheduler
    assert scheduler.kv_tokens_in_use() == 0
    assert engine.flush_cache()
    assert engine.runner.allocator.available_size() == engine.runner.allocator.size
