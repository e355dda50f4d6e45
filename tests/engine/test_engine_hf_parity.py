"""Greedy tokens through the whole engine (scheduler, chunked prefill, retraction, prefix cache)
equal HF transformers' generate on the same random weights (CPU, float32)."""
from __future__ import annotations

import logging

import pytest
import torch
from hf_models import load_hf, save_tiny_model

from tessera import LLM, SamplingParams

MAX_NEW = 32


def _prompts(n: int = 16, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(1, 300, n).round().long().tolist()
    return [torch.randint(3, 300, (n_,), generator=g).tolist() for n_ in lengths]


def _hf_greedy(path: str, prompts: list[list[int]]) -> list[list[int]]:
    hf = load_hf(path)
    outs = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            gen = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                              min_new_tokens=MAX_NEW, do_sample=False, pad_token_id=0)
            outs.append(gen[0, len(p):].tolist())
    return outs


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def model_and_reference(request, tmp_path_factory):
    path = save_tiny_model(str(tmp_path_factory.mktemp(request.param)), request.param)
    prompts = _prompts()
    return path, prompts, _hf_greedy(path, prompts)


def _run(path, prompts, **kw):
    params = SamplingParams(temperature=0.0, max_new_tokens=MAX_NEW, min_new_tokens=MAX_NEW,
                            ignore_eos=True)
    with LLM(model=path, device="cpu", dtype="float32", **kw) as llm:
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        stats = llm.engine.stats()
        llm.engine.scheduler.check_kv_invariant()
    return [o.token_ids for o in outs], outs, stats


def test_greedy_matches_hf_with_chunked_prefill(model_and_reference):
    path, prompts, ref = model_and_reference
    got, outs, _ = _run(path, prompts, chunked_prefill_size=64, kv_cache_tokens=16384)
    assert got == ref
    assert all(o.finish_reason == "length" for o in outs)


def test_greedy_matches_hf_under_retraction(model_and_reference, caplog):
    path, prompts, ref = model_and_reference
    caplog.set_level(logging.WARNING, logger="tessera.scheduler.scheduler")
    # 700 tokens hold only a few of these requests at once; admission told to reserve nothing
    # for their outputs (new-token ratio 0) overcommits the pool, so the scheduler must retract
    got, _, stats = _run(path, prompts, chunked_prefill_size=64, kv_cache_tokens=700,
                         max_running_requests=16,  # more than the pool's own choice (2)
                         init_new_token_ratio=0.0, min_new_token_ratio=0.0)
    assert stats["num_retractions"] > 0
    assert any("retracted" in r.message for r in caplog.records)
    assert got == ref
    assert stats["kv_free_tokens"] + stats["kv_cached_tokens"] == stats["kv_pool_size"]


def test_greedy_same_with_and_without_radix_cache_shared_prefix(model_and_reference):
    path, _, _ = model_and_reference
    g = torch.Generator().manual_seed(1)
    system = torch.randint(3, 300, (150,), generator=g).tolist()
    prompts = [system + torch.randint(3, 300, (k + 1,), generator=g).tolist() for k in range(12)]
    on, outs_on, stats_on = _run(path, prompts, chunked_prefill_size=64, kv_cache_tokens=16384,
                                 max_running_requests=4)
    off, _, _ = _run(path, prompts, chunked_prefill_size=64, kv_cache_tokens=16384,
                     max_running_requests=4, disable_radix_cache=True)
    assert on == off
    assert stats_on["cached_tokens_total"] > 0
    assert max(o.num_cached_tokens for o in outs_on) >= 150


def test_request_that_can_never_fit_is_rejected(tmp_path):
    path = save_tiny_model(str(tmp_path / "m"), "llama")
    with LLM(model=path, device="cpu", kv_cache_tokens=256, context_length=512) as llm:
        with pytest.raises(ValueError, match="context length"):
            llm.generate(prompt_token_ids=[[5] * 600])
        with pytest.raises(ValueError, match="KV pool"):
            llm.generate(prompt_token_ids=[[5] * 200], sampling_params=SamplingParams(
                max_new_tokens=100))
        with pytest.raises(ValueError, match="empty"):
            llm.generate(prompt_token_ids=[[]])
        # the engine is still usable afterwards
        out = llm.generate(prompt_token_ids=[[5] * 10],
                           sampling_params=SamplingParams(max_new_tokens=3, ignore_eos=True))
        assert len(out[0].token_ids) == 3
