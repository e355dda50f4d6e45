"""Completions echo + prompt logprobs against HF transformers on the same tiny random Llama, and
chat prompts rendered as HF renders them (one BOS) with a Llama-3-style tokenizer."""
from __future__ import annotations

import math

import openai
import pytest
import torch
from hf_models import load_hf, save_llama3_style_tokenizer, save_tiny_model

from tessera.server.testing import ServerProcess

PROMPTS = ["The capital of France is Paris.", "1 2 3 4 5 6", "héllo wörld"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("llama3ish"))
    save_tiny_model(path, "llama")
    save_llama3_style_tokenizer(path)
    return path


@pytest.fixture(scope="module")
def server(model_dir):
    with ServerProcess(["--model-path", model_dir, "--kv-cache-tokens", "8192",
                        "--served-model-name", "tiny"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def hf(model_dir):
    from transformers import AutoTokenizer

    return load_hf(model_dir), AutoTokenizer.from_pretrained(model_dir)


def hf_prompt_logprobs(hf, text: str) -> tuple[list[int], list[float]]:
    model, tok = hf
    ids = tok.encode(text)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return ids, [float(logprobs[i, ids[i + 1]]) for i in range(len(ids) - 1)]


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_prompt_logprobs_equal_hf(client, hf, max_tokens):
    out = client.completions.create(model="tiny", prompt=PROMPTS, max_tokens=max_tokens,
                                    echo=True, logprobs=1, temperature=0)
    for text, choice in zip(PROMPTS, out.choices):
        ids, expected = hf_prompt_logprobs(hf, text)
        lp = choice.logprobs
        assert choice.text.startswith(text)
        assert len(lp.token_logprobs) == len(ids) + max_tokens and lp.token_logprobs[0] is None
        got = lp.token_logprobs[1:len(ids)]
        assert got == pytest.approx(expected, abs=1e-4)
        assert math.fsum(got) == pytest.approx(math.fsum(expected), abs=1e-4)
        # what lm-evaluation-harness reads: a top-1 dict at every prompt position
        assert all(len(top) >= 1 for top in lp.top_logprobs[1:])
    assert out.usage.completion_tokens == max_tokens * len(PROMPTS)


def test_echo_streams_the_prompt_first(client):
    chunks = list(client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=3,
                                            echo=True, temperature=0, stream=True))
    whole = client.completions.create(model="tiny", prompt=PROMPTS[0], max_tokens=3, echo=True,
                                      temperature=0).choices[0].text
    assert chunks[0].choices[0].text.startswith(PROMPTS[0])
    assert "".join(c.choices[0].text for c in chunks) == whole


def test_logprobs_zero_reports_the_sampled_token(client):
    lp = client.completions.create(model="tiny", prompt="a", max_tokens=4, temperature=0,
                                   logprobs=0).choices[0].logprobs
    assert len(lp.top_logprobs) == 4
    for tok, chosen, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert top == {tok: chosen}


def test_chat_prompt_has_one_bos_like_hf(client, hf):
    _, tok = hf
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    expected = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    assert expected.count(tok.bos_token_id) == 1
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1)
    assert out.usage.prompt_tokens == len(expected)


def test_continue_final_message_extends_the_assistant_turn(client, hf):
    _, tok = hf
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello,"}]
    expected = tok.apply_chat_template(messages, tokenize=True, continue_final_message=True)
    expected = expected if isinstance(expected, list) else expected["input_ids"]
    out = client.chat.completions.create(model="tiny", messages=messages, max_tokens=1,
                                         extra_body={"continue_final_message": True})
    assert out.usage.prompt_tokens == len(expected)
