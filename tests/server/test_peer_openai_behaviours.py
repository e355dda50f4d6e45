"""Behaviours the OpenAI-server tests of SGLang (matched_stop on both endpoints) and vLLM
(completion logprobs limits, prompt_logprobs, stream_options) assert, checked against a real
`tessera serve` (tiny-qwen3, random weights: nothing here needs a trained model)."""
from __future__ import annotations

import math

import httpx
import openai
import pytest

from tessera.server.testing import ServerProcess

MODEL = "tiny-qwen3"
CHAT = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--kv-cache-tokens", "8192", "--max-running-requests", "16"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def _post(server, path, body):
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=60)


def _chat(server, **kw):
    r = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": CHAT,
                                               "temperature": 0, "top_p": 1, **kw})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]


def test_chat_matched_stop_for_a_stop_string_eos_and_length(server):
    text = _chat(server, max_tokens=40, ignore_eos=True)["message"]["content"]
    stop = next(text[i:i + 2] for i in range(1, len(text) - 2) if "\ufffd" not in text[i:i + 2])
    hit = _chat(server, max_tokens=40, ignore_eos=True, stop=stop)
    assert hit["finish_reason"] == "stop" and hit["matched_stop"] == stop
    assert stop not in hit["message"]["content"]
    # EOS forced by logit_bias: finish "stop", matched_stop is the EOS token id
    eos = httpx.get(f"{server.base_url}/get_model_info").json()["eos_token_ids"][0]
    ended = _chat(server, max_tokens=40, logit_bias={str(eos): 100})
    assert ended["finish_reason"] == "stop" and ended["matched_stop"] == eos
    length = _chat(server, max_tokens=5, ignore_eos=True)
    assert length["finish_reason"] == "length" and length["matched_stop"] is None


def test_completion_matched_stop_is_the_eos_id(server):
    eos = httpx.get(f"{server.base_url}/get_model_info").json()["eos_token_ids"][0]
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": "2 + 2 =", "max_tokens": 40,
                                          "temperature": 0, "logit_bias": {str(eos): 100}})
    choice = r.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == eos
    assert choice["stop_reason"] is None   # vLLM: EOS is not a stop string / stop_token_ids entry


def test_logprobs_over_the_limit_is_a_400_streamed_or_not(client):
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError, match="logprobs"):
            out = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=5,
                                            logprobs=21, stream=stream)
            list(out) if stream else None
    # by id: the byte tokenizer decodes many ids to the same U+FFFD text, which would share a key
    ok = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=5, logprobs=5,
                                   extra_body={"return_tokens_as_token_ids": True})
    top = ok.choices[0].logprobs.top_logprobs
    assert len(top) == 5 and all(5 <= len(t) <= 6 for t in top)
    # by text, colliding alternatives keep the best logprob (the highest among the top ones)
    by_text = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=5, logprobs=20,
                                        temperature=0).choices[0].logprobs
    by_id = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=5, logprobs=20,
                                      temperature=0,
                                      extra_body={"return_tokens_as_token_ids": True}
                                      ).choices[0].logprobs
    collided = 0
    for texts, ids in zip(by_text.top_logprobs, by_id.top_logprobs):
        high = [v for k, v in ids.items() if 128 <= int(k.split(":")[1]) < 256]  # U+FFFD alone
        if len(high) > 1:
            collided += 1
            assert math.isclose(texts["\ufffd"], max(high), abs_tol=1e-5)
    assert collided   # 20 of 256+ ids: some positions hold several non-ASCII bytes
    none = client.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=5)
    assert none.choices[0].logprobs is None


def test_prompt_logprobs_per_prompt_token(server, client):
    prompts = ["A robot may not", "My name is"]
    for bad in (-1, 21):
        r = _post(server, "/v1/completions", {"model": MODEL, "prompt": prompts,
                                              "prompt_logprobs": bad})
        assert r.status_code == 400 and "prompt_logprobs" in r.text
    r = _post(server, "/v1/completions", {"model": MODEL, "prompt": "x", "stream": True,
                                          "prompt_logprobs": 1})
    assert r.status_code == 400 and "prompt_logprobs" in r.text
    plain = client.completions.create(model=MODEL, prompt=prompts, max_tokens=2)
    assert all(c.model_extra.get("prompt_logprobs") is None for c in plain.choices)
    for k in (0, 1, 3):
        out = client.completions.create(model=MODEL, prompt=prompts, max_tokens=2, n=2,
                                        extra_body={"prompt_logprobs": k})
        assert out.choices[0].logprobs is None   # only the prompt's were asked for
        for c in out.choices:
            ids = list(prompts[c.index // 2].encode())   # the byte tokenizer: one id per byte
            plp = c.model_extra["prompt_logprobs"]
            assert len(plp) == len(ids) and plp[0] is None
            for tid, entry in zip(ids[1:], plp[1:]):
                assert str(tid) in entry and k <= len(entry) <= k + 1
                assert all(v["logprob"] <= 0 and v["rank"] >= 1 for v in entry.values())
    # the same numbers as echo's prompt logprobs
    echo = client.completions.create(model=MODEL, prompt=prompts[1], max_tokens=0, echo=True,
                                     logprobs=1).choices[0].logprobs.token_logprobs
    vllm = client.completions.create(model=MODEL, prompt=prompts[1], max_tokens=1,
                                     extra_body={"prompt_logprobs": 1}).choices[0]
    ids = list(prompts[1].encode())
    got = [e[str(t)]["logprob"] for t, e in zip(ids[1:], vllm.model_extra["prompt_logprobs"][1:])]
    assert all(math.isclose(a, b, abs_tol=1e-4) for a, b in zip(got, echo[1:len(ids)]))


@pytest.mark.parametrize("include_usage,continuous", [(False, False), (False, True),
                                                      (True, False), (True, True), (None, None)])
def test_stream_options_usage_matrix(client, include_usage, continuous):
    options = {} if include_usage is None else {"include_usage": include_usage,
                                                "continuous_usage_stats": continuous}
    chunks = list(client.completions.create(model=MODEL, prompt="usage", max_tokens=5,
                                            temperature=0, stream=True, stream_options=options,
                                            extra_body={"ignore_eos": True}))
    body = [c for c in chunks if c.choices]
    assert sum(c.choices[0].finish_reason is not None for c in body) == 1
    assert body[-1].choices[0].finish_reason == "length"
    for c in body:   # continuous_usage_stats counts only along with include_usage (vLLM's rule)
        assert (c.usage is not None) == bool(include_usage and continuous)
        if c.usage is not None:
            assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
    tail = chunks[len(body):]
    if include_usage:
        assert len(tail) == 1 and tail[0].choices == [] and tail[0].usage.completion_tokens == 5
        assert tail[0].usage.total_tokens == tail[0].usage.prompt_tokens + 5
    else:
        assert tail == []


def test_stream_options_without_stream_is_a_400(server):
    for options in ({"include_usage": True}, {"continuous_usage_stats": True},
                    {"include_usage": None}):
        r = _post(server, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 2,
                                              "stream_options": options})
        assert r.status_code == 400 and "stream_options" in r.text


@pytest.mark.parametrize("top", [None, 5])
def test_chat_stream_with_n_opens_each_choice_in_its_own_chunk(client, top):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=CHAT, temperature=0, n=2, max_tokens=12, stream=True,
        logprobs=top is not None, top_logprobs=top, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 24
    opened, finishes = set(), {0: 0, 1: 0}
    for chunk in chunks[:-1]:
        assert len(chunk.choices) == 1 and chunk.id and chunk.created
        choice = chunk.choices[0]
        if choice.index not in opened:   # the first chunk of every index: the role alone
            assert choice.delta.role == "assistant" and not choice.delta.content
            opened.add(choice.index)
            continue
        finishes[choice.index] += choice.finish_reason is not None
        if top is not None and choice.logprobs is not None:
            assert all(len(t.top_logprobs) == top for t in choice.logprobs.content)
        assert isinstance(choice.delta.content, str) or choice.finish_reason
    assert opened == {0, 1} and finishes == {0: 1, 1: 1}


def test_chat_prompt_logprobs_cover_the_rendered_prompt(server):
    ids = _post(server, "/tokenize", {"messages": CHAT}).json()["tokens"]
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 2}
    out = _post(server, "/v1/chat/completions", {**body, "prompt_logprobs": 2}).json()
    plp = out["prompt_logprobs"]   # on the response, as vLLM places it: a chat has one prompt
    assert len(plp) == len(ids) and plp[0] is None and out["choices"][0]["logprobs"] is None
    assert "prompt_logprobs" not in out["choices"][0]
    assert all(str(t) in e and 2 <= len(e) <= 3 for t, e in zip(ids[1:], plp[1:]))
    assert _post(server, "/v1/chat/completions", body).json()["prompt_logprobs"] is None
    r = _post(server, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "stream": True,
                                               "prompt_logprobs": 1})
    assert r.status_code == 400 and "prompt_logprobs" in r.text
