"""The public offline API: `from tessera import LLM, SamplingParams`, the accepted prompt forms,
per-prompt parameters, n, seeds, and clear errors for what it cannot take (CPU, tiny preset)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tessera import LLM, SamplingParams

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=5, ignore_eos=True)


@pytest.fixture(scope="module")
def llm():
    with LLM(model="tiny-qwen3", kv_cache_tokens=4096, max_running_requests=8) as engine:
        yield engine


def test_prompt_forms_give_the_same_greedy_tokens(llm):
    ids = llm.tokenizer.encode("The capital of France")
    by_text = llm.generate("The capital of France", GREEDY)[0]
    assert by_text.prompt_token_ids == ids and by_text.num_prompt_tokens == len(ids)
    for form in ([ids], [tuple(ids)], [np.array(ids)], torch.tensor([ids])):
        out = llm.generate(prompt_token_ids=form, sampling_params=GREEDY)[0]
        assert out.token_ids == by_text.token_ids and out.prompt is None
        assert out.finish_reason == "length" and len(out.token_ids) == 5


def test_one_result_per_prompt_in_order_with_per_prompt_params(llm):
    prompts = ["a", "bb", "ccc"]
    params = [SamplingParams(temperature=0.0, max_new_tokens=n, ignore_eos=True)
              for n in (1, 2, 3)]
    outs = llm.generate(prompts, params)
    assert [o.prompt for o in outs] == prompts
    assert [len(o.token_ids) for o in outs] == [1, 2, 3]
    assert llm.generate([], GREEDY) == []


def test_n_samples_and_seeds(llm):
    params = SamplingParams(temperature=1.0, max_new_tokens=8, n=3, seed=7, ignore_eos=True)
    first = llm.generate("hello", params)[0]
    again = llm.generate("hello", params)[0]
    assert [c.index for c in first.outputs] == [0, 1, 2]
    assert [c.token_ids for c in first.outputs] == [c.token_ids for c in again.outputs]
    assert len({tuple(c.token_ids) for c in first.outputs}) > 1  # distinct seeds per sample


@pytest.mark.parametrize("call,error,match", [
    (lambda m: m.generate(123), TypeError, "prompts must be a list"),
    (lambda m: m.generate([1, 2]), TypeError, "token ids go in prompt_token_ids"),
    (lambda m: m.generate(prompt_token_ids="abc"), TypeError, "must be a list"),
    (lambda m: m.generate(prompt_token_ids=[[1.5]]), TypeError, "int token ids"),
    (lambda m: m.generate(prompt_token_ids=[[]]), ValueError, "prompt is empty"),
    (lambda m: m.generate(prompt_token_ids=[[10**9]]), ValueError, "out of range"),
    (lambda m: m.generate(), ValueError, "exactly one of"),
    (lambda m: m.generate("x", prompt_token_ids=[[1]]), ValueError, "exactly one of"),
    (lambda m: m.generate(["a", "b"], [GREEDY]), ValueError, "1 sampling params for 2"),
])
def test_bad_input_is_a_clear_error_and_nothing_runs(llm, call, error, match):
    with pytest.raises(error, match=match):
        call(llm)
    assert not llm.engine.has_unfinished()


def test_shutdown_is_final():
    engine = LLM(model="tiny-qwen3", kv_cache_tokens=1024)
    engine.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        engine.generate("hi", GREEDY)
