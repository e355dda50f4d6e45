"""Admission control: the new-token ratio (tessera.scheduler.admission) and what it is for, a
pool that is not thrashed (admit -> run out -> retract -> re-admit) by a long-output workload."""
from __future__ import annotations

import random

import pytest

from tessera import LLM, SamplingParams
from tessera.config.engine import SchedulerConfig
from tessera.scheduler.admission import MIN_FINISHED, NewTokenRatio, remaining_output
from tessera.scheduler.request import Request


def make_request(prompt_len: int, max_new: int, produced: int = 0, kv_len: int = 0) -> Request:
    req = Request("r", list(range(prompt_len)), SamplingParams(max_new_tokens=max_new), 0,
                  frozenset(), max_total_len=10_000)
    req.output_ids = [1] * produced
    req.kv_len = kv_len
    return req


def test_ratio_decays_to_its_floor_and_resets_after_a_retraction() -> None:
    ratio = NewTokenRatio(SchedulerConfig(init_new_token_ratio=0.7, min_new_token_ratio=0.1,
                                          new_token_ratio_decay_steps=6))
    assert ratio.value == pytest.approx(0.7)
    for _ in range(3):  # (1 - 0.1) / 6 per step
        ratio.step(retracted=False)
    assert ratio.value == pytest.approx(0.25)
    for _ in range(10):
        ratio.step(retracted=False)
    assert ratio.value == pytest.approx(0.1)  # not below the floor
    ratio.step(retracted=True)
    assert ratio.value == 1.0


def test_floor_is_learned_from_finished_requests() -> None:
    ratio = NewTokenRatio(SchedulerConfig(init_new_token_ratio=0.5, min_new_token_ratio=0.1,
                                          new_token_ratio_decay_steps=1))
    ratio.step(retracted=False)
    for i in range(MIN_FINISHED):
        assert ratio.floor == 0.1, "too few finished requests to learn from"
        ratio.finished(make_request(4, max_new=100, produced=90))
    assert ratio.floor == pytest.approx(0.9)  # they used 90% of their budgets
    assert ratio.value == pytest.approx(0.9)


def test_reserve_counts_unrun_tokens_and_the_estimated_output() -> None:
    ratio = NewTokenRatio(SchedulerConfig(init_new_token_ratio=0.5, min_new_token_ratio=0.5))
    waiting = make_request(prompt_len=30, max_new=40)
    assert remaining_output(waiting) == 40
    assert ratio.reserve(waiting) == 30 + 20
    decoding = make_request(prompt_len=30, max_new=40, produced=10, kv_len=39)
    assert ratio.reserve(decoding) == 1 + 15  # its last token still to run, half of 30 left


def run_workload(**engine: object) -> tuple[int, int, list[int]]:
    """120 requests shaped like the serving benchmark's random workload (uniform input and
    output lengths, outputs run to max_tokens) at once into a pool of a fifth of their total:
    (retractions, retractions of a request already retracted once, output lengths)."""
    rng = random.Random(0)
    prompts = [[rng.randrange(3, 250) for _ in range(rng.randint(1, 48))] for _ in range(120)]
    params = [SamplingParams(temperature=0.0, max_new_tokens=rng.randint(1, 48), ignore_eos=True)
              for _ in prompts]
    with LLM("tiny-llama", device="cpu", load_format="dummy", kv_cache_tokens=1200,
             max_running_requests=64, chunked_prefill_size=256, **engine) as llm:
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        sched = llm.engine.scheduler
        sched.check_kv_invariant()
        return sched.num_retractions, sched.retraction_log.repeated, [
            len(o.token_ids) for o in outs]


def test_long_outputs_do_not_thrash_the_pool() -> None:
    # reserving nothing for outputs (ratio 0: the old admission's overcommit) thrashes ...
    thrash, _, lengths = run_workload(init_new_token_ratio=0.0,
                                                    min_new_token_ratio=0.0)
    assert thrash >= 5
    # ... the default ratio (learned floor) keeps retractions under 1 per 100 requests and
    # never retracts one request twice, with the same outputs
    retractions, repeated, same_lengths = run_workload()
    assert retractions <= 1 and repeated == 0, (retractions, repeated)
    assert same_lengths == lengths
