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


@pytest.mark.parametrize("kwargs,error,match", [
    ({"kv_cache_tokens": "100"}, TypeError, "kv_cache_tokens='100': expected int"),
    ({"seed": 1.5}, TypeError, "seed=1.5: expected int"),
    ({"disable_radix_cache": "yes"}, TypeError, "expected bool"),
    ({"schedule_policy": "random"}, ValueError, r"choose one of \['fcfs', 'lpm'\]"),
    ({"dtype": "float8"}, ValueError, "dtype='float8'"),
    ({"attention_backend": "flash"}, ValueError, "attention_backend='flash'"),
    ({"context_length": 0}, ValueError, "--context-length must be >= 1"),
    ({"context_length": 10**9}, ValueError, "exceeds the model's max_position_embeddings"),
    ({"max_prefill_tokens": 0}, ValueError, "--max-prefill-tokens"),
    ({"cuda_graph_max_bs": 0}, ValueError, "--cuda-graph-max-bs"),
    ({"tp_size": 0}, ValueError, "--tp-size"),
    ({"tp_size": 3}, ValueError, "--tp-size 3 does not divide the model.s"),
    ({"no_such_flag": 1}, TypeError, "unknown engine argument"),
])
def test_bad_engine_arguments_are_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        LLM(model="tiny-qwen3", kv_cache_tokens=kwargs.pop("kv_cache_tokens", 1024), **kwargs)


def test_engine_arguments_accept_paths_and_numpy_integers(tmp_path):
    import pathlib

    with LLM(model=pathlib.Path("tiny-qwen3"), kv_cache_tokens=np.int64(1024),
             mem_fraction_static=1 - 0.5) as engine:
        assert engine.config.load.model_path == "tiny-qwen3"
        assert type(engine.config.cache.kv_cache_tokens) is int
