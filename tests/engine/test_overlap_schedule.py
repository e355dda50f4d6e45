"""The overlap schedule (Engine.step): the next step is launched before the last one's tokens are
read. It must change nothing a user sees: the same tokens, logprobs and finish reasons as reading
every step first, whatever ends a request (EOS, stop tokens and strings, max_new_tokens, the
context length, aborts), and the KV pool whole at the end."""
from __future__ import annotations

import random

import pytest

from tessera.config import EngineConfig
from tessera.engine.engine import Engine
from tessera.sampling.params import SamplingParams


def _engine(overlap: bool, **kw) -> Engine:
    return Engine(EngineConfig.from_kwargs(**{
        "model_path": "tiny-llama", "device": "cpu", "load_format": "dummy", "seed": 0,
        "kv_cache_tokens": 4096, "chunked_prefill_size": 48, "max_running_requests": 8,
        "disable_overlap_schedule": not overlap, **kw}))


def _workload(vocab: int, eos: int) -> list[tuple[list[int], SamplingParams]]:
    rng = random.Random(0)
    work = []
    for i in range(14):
        prompt = [rng.randrange(3, vocab) for _ in range(rng.randint(1, 100))]
        params = SamplingParams(
            temperature=rng.choice([0.0, 0.8]), top_k=rng.choice([-1, 20]), seed=i,
            max_new_tokens=rng.randint(1, 30), logprobs=i % 3 == 0,
            top_logprobs=2 if i % 3 == 0 else 0,
            # a stop token the random model will hit now and then, stop strings, a penalty
            stop_token_ids=[rng.randrange(3, vocab) for _ in range(20)] if i % 4 == 1 else None,
            stop=["a", "e"] if i % 4 == 2 else None,
            frequency_penalty=0.5 if i == 5 else 0.0,
            min_new_tokens=3 if i == 7 else 0)
        work.append((prompt, params))
    return work


def _run(engine: Engine, work, abort_at: dict[int, int] | None = None) -> dict[str, tuple]:
    rids = [engine.add_request(p, params) for p, params in work]
    tokens = {rid: [] for rid in rids}
    logprobs = {rid: [] for rid in rids}
    reasons = {}
    steps = 0
    while engine.has_unfinished():
        steps += 1
        for i, step in (abort_at or {}).items():
            if step == steps:
                engine.abort(rids[i])
        for out in engine.step():
            tokens[out.rid] += out.new_token_ids
            logprobs[out.rid] += out.new_logprobs
            if out.finished:
                assert out.rid not in reasons, "finished twice"
                reasons[out.rid] = (out.finish_reason, out.stop_str)
        engine.scheduler.check_kv_invariant()
    assert engine.flush_cache()
    assert engine.runner.allocator.available_size() == engine.runner.allocator.size
    return {i: (tokens[r], logprobs[r], reasons[r]) for i, r in enumerate(rids)}


def _assert_same(got: dict, want: dict) -> None:
    """Same tokens and finish reasons; logprobs to float32 rounding (a request that finished
    still runs one more step with the overlap schedule, so batches differ in size and a CPU
    matmul may sum in another order)."""
    assert got.keys() == want.keys()
    for i in want:
        assert got[i][0] == want[i][0] and got[i][2] == want[i][2], i
        assert got[i][1] == pytest.approx(want[i][1], abs=1e-5), i


def test_overlap_gives_what_reading_every_step_gives() -> None:
    sync, overlap = _engine(False), _engine(True)
    work = _workload(sync.vocab_size, min(sync.eos_token_ids))
    want = _run(sync, work)
    got = _run(overlap, work)
    _assert_same(got, want)
    reasons = {r[2][0] for r in want.values()}
    assert reasons >= {"length", "stop"}, "the workload should end requests both ways"


def test_overlap_with_context_limit_and_retraction() -> None:
    """Requests that run into the context length, in a pool small enough to retract."""
    # admission reserving nothing for outputs (ratio 0) overcommits the pool: retractions
    kw = {"context_length": 96, "kv_cache_tokens": 260, "init_new_token_ratio": 0.0,
          "min_new_token_ratio": 0.0}
    sync, overlap = _engine(False, **kw), _engine(True, **kw)
    rng = random.Random(1)
    work = [([rng.randrange(3, 200) for _ in range(rng.randint(40, 80))],
             SamplingParams(temperature=0.0, max_new_tokens=60, ignore_eos=True))
            for _ in range(6)]
    want = _run(sync, work)
    got = _run(overlap, work)
    _assert_same(got, want)
    assert overlap.scheduler.num_retractions > 0
    assert all(len(toks) + len(p) == 96 or len(toks) == 60
               for (toks, _, _), (p, _) in zip(got.values(), work))


@pytest.mark.parametrize("abort_step", [1, 2, 5, 9])
def test_abort_while_a_step_is_in_flight(abort_step: int) -> None:
    sync, overlap = _engine(False), _engine(True)
    work = [([5, 6, 7, 8] * (i + 1), SamplingParams(temperature=0.0, max_new_tokens=20,
                                                     ignore_eos=True)) for i in range(4)]
    got = _run(overlap, work, abort_at={1: abort_step, 2: abort_step + 1})
    want = _run(sync, work)
    assert got[1][2][0] == "abort" and got[2][2][0] == "abort"
    _assert_same({i: got[i] for i in (0, 3)}, {i: want[i] for i in (0, 3)})
    for i in (1, 2):  # an aborted request's tokens are a prefix of the full run's
        assert got[i][0] == want[i][0][:len(got[i][0])]


def test_next_step_is_launched_before_the_last_is_read(monkeypatch) -> None:
    engine = _engine(True)
    order = []
    forward, process = engine.runner.forward, engine._process
    monkeypatch.setattr(engine.runner, "forward", lambda b: (order.append("launch"), forward(b))[1])
    monkeypatch.setattr(engine, "_process", lambda s: (order.append("read"), process(s))[1])
    engine.add_request([5, 6, 7], SamplingParams(temperature=0.0, max_new_tokens=4,
                                                 ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    # prefill launched; decode 1 launched, prefill read; ... the last step read alone
    assert order == ["launch", "launch", "read", "launch", "read", "launch", "read", "read"]


def test_history_batches_forward_before_the_last_step_is_read(monkeypatch) -> None:
    """A penalty (or grammar) needs the last token to sample, not to run the forward: the next
    forward is launched first, the step before is read while it runs, then the batch samples."""
    engine = _engine(True)
    order = []
    forward, process, sample = engine.runner.forward, engine._process, engine._sample
    monkeypatch.setattr(engine.runner, "forward", lambda b: (order.append("launch"), forward(b))[1])
    monkeypatch.setattr(engine, "_process", lambda s: (order.append("read"), process(s))[1])
    monkeypatch.setattr(engine, "_sample", lambda f: (order.append("sample"), sample(f))[1])
    engine.add_request([5, 6, 7], SamplingParams(temperature=0.0, max_new_tokens=3,
                                                 ignore_eos=True, frequency_penalty=0.5))
    while engine.has_unfinished():
        engine.step()
    assert order == ["launch", "sample", "launch", "read", "sample", "launch", "read", "sample",
                     "read"]
