"""Behaviours the OpenAI-server tests of SGLang (test_openai_server.py, test_matched_stop.py) and
vLLM (test_completion.py, test_chat.py, test_tokenization.py, test_return_tokens_as_ids.py) assert
without needing a trained model, written anew and checked against one real `tessera serve`
(tiny-qwen3, random weights, byte tokenizer: one id per byte).

A random model writes no format by itself: the guided_* outputs below hold only because the
grammar mask forces them."""
from __future__ import annotations

import json
import math
import re

import httpx
import jsonschema
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


# ---- the second walk (vLLM test_completion / test_chat / test_tokenization, the rest of
# SGLang test_openai_server and test_matched_stop) --------------------------------------------
PICK_CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Pick one."}]
# a schema whose every valid output is short, so max_tokens never cuts it
SCHEMA = {"type": "object", "properties": {"k": {"enum": ["x", "y"]},
                                           "v": {"type": "integer", "minimum": 0,
                                                 "maximum": 9}},
          "required": ["k", "v"], "additionalProperties": False}
# regex metacharacters inside the choices: each must be matched literally
CHOICES = ["C++", "Rust", "a.b (x)", "$5|6"]


def _error(r, param):
    """The response is a 400 in OpenAI's error shape, naming `param`."""
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and param in err["message"]
    return err


# ---- model name, seed --------------------------------------------------------------------------
def test_an_empty_model_name_means_the_served_model(server):
    chat = _post(server, "/v1/chat/completions", {"model": "", "messages": PICK_CHAT, "max_tokens": 2})
    assert chat.status_code == 200 and chat.json()["model"] == MODEL
    text = _post(server, "/v1/completions", {"model": "", "prompt": "x", "max_tokens": 2})
    assert text.status_code == 200 and text.json()["model"] == MODEL
    assert _error(_post(server, "/v1/completions", {"model": "other", "prompt": "x"}),
                  "other")["code"] == "model_not_found"


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", {"messages": PICK_CHAT}),
                                       ("/v1/completions", {"prompt": "x"})])
def test_a_seed_must_fit_64_bits(server, path, body):
    for seed in (1 << 63, -(1 << 63) - 1):
        assert _error(_post(server, path, {**body, "seed": seed, "max_tokens": 2}),
                      "seed")["param"] == "seed"
    for seed in ((1 << 63) - 1, -(1 << 63)):
        assert _post(server, path, {**body, "seed": seed, "max_tokens": 2}).status_code == 200


# ---- streamed usage ------------------------------------------------------------------------------
def test_continuous_usage_is_on_every_chat_chunk_and_grows(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=PICK_CHAT, max_completion_tokens=6, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"min_tokens": 6}))
    assert all(c.usage is not None for c in chunks)   # the role-only opening chunk too
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].usage.completion_tokens == 0
    counts = [c.usage.completion_tokens for c in chunks[1:] if c.choices]
    assert counts == sorted(set(counts)) and counts[-1] == 6   # each chunk carries new tokens
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 6
    for c in chunks:
        assert c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens
        assert c.usage.prompt_tokens > 0


def test_continuous_usage_needs_include_usage(client):
    for stream in (client.chat.completions.create(
            model=MODEL, messages=PICK_CHAT, max_tokens=4, stream=True,
            stream_options={"include_usage": False, "continuous_usage_stats": True}),
                   client.completions.create(
            model=MODEL, prompt="u", max_tokens=4, stream=True,
            stream_options={"continuous_usage_stats": True})):
        chunks = list(stream)
        assert chunks and all(c.usage is None for c in chunks) and all(c.choices for c in chunks)


# ---- prompt_logprobs is always a field ----------------------------------------------------------
def test_prompt_logprobs_is_null_unless_asked_for(server):
    text = _post(server, "/v1/completions", {"prompt": ["a", "b"], "max_tokens": 1}).json()
    assert all("prompt_logprobs" in c and c["prompt_logprobs"] is None for c in text["choices"])
    chat = _post(server, "/v1/chat/completions", {"messages": PICK_CHAT, "max_tokens": 1}).json()
    assert "prompt_logprobs" in chat and chat["prompt_logprobs"] is None
    asked = _post(server, "/v1/chat/completions", {"messages": PICK_CHAT, "max_tokens": 1, "n": 2,
                                                   "prompt_logprobs": 0}).json()
    assert len(asked["prompt_logprobs"]) == asked["usage"]["prompt_tokens"]


# ---- vLLM's guided_* constraint fields ----------------------------------------------------------
def test_guided_choice_picks_one_of_the_strings_literally(client):
    out = client.completions.create(model=MODEL, prompt="lang:", n=12, temperature=1.0, seed=4,
                                    max_tokens=12, extra_body={"guided_choice": CHOICES})
    texts = [c.text for c in out.choices]
    assert all(t in CHOICES for t in texts) and len(set(texts)) > 1, texts
    chat = client.chat.completions.create(model=MODEL, messages=PICK_CHAT, n=4, temperature=1.0,
                                          seed=5, max_tokens=12,
                                          extra_body={"guided_choice": CHOICES})
    assert all(c.message.content in CHOICES and c.finish_reason == "stop" for c in chat.choices)


def test_guided_json_regex_and_grammar(client):
    for extra in ({"guided_json": SCHEMA}, {"guided_json": json.dumps(SCHEMA)}):
        out = client.chat.completions.create(model=MODEL, messages=PICK_CHAT, n=4, temperature=1.0,
                                             seed=6, max_tokens=40, extra_body=extra)
        for c in out.choices:
            jsonschema.validate(json.loads(c.message.content), SCHEMA)
    ip = r"\d{1,3}(\.\d{1,3}){3}"
    out = client.completions.create(model=MODEL, prompt="ip:", n=6, temperature=1.0, seed=7,
                                    max_tokens=20, extra_body={"guided_regex": ip})
    assert all(re.fullmatch(ip, c.text) for c in out.choices), [c.text for c in out.choices]
    out = client.completions.create(model=MODEL, prompt="q:", n=6, temperature=1.0, seed=8,
                                    max_tokens=8,
                                    extra_body={"guided_grammar": 'root ::= "on" | "off"'})
    assert all(c.text in ("on", "off") for c in out.choices)


@pytest.mark.parametrize("path,body", [("/v1/chat/completions", {"messages": PICK_CHAT}),
                                       ("/v1/completions", {"prompt": "x"})])
@pytest.mark.parametrize("extra,param", [
    ({"guided_json": 42}, "guided_json"),
    ({"guided_regex": {"1": "Python"}}, "guided_regex"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_choice": ["ok", ""]}, "guided_choice"),
    ({"guided_regex": "a+", "guided_json": SCHEMA}, "guided_json"),
    ({"regex": "a+", "guided_choice": ["a"]}, "guided_choice"),
])
def test_bad_guided_fields_are_400s(server, path, body, extra, param):
    _error(_post(server, path, {**body, **extra, "max_tokens": 4}), param)


# ---- peer extras tessera does not implement: refused, never ignored -----------------------------
@pytest.mark.parametrize("path,body", [("/v1/chat/completions", {"messages": PICK_CHAT}),
                                       ("/v1/completions", {"prompt": "x"})])
@pytest.mark.parametrize("field,value", [("stop_regex", r"and|or"),
                                         ("stop_regex", [r"\."]),
                                         ("allowed_token_ids", [1, 2, 3]),
                                         ("use_beam_search", True),
                                         ("guided_decoding_backend", "outlines"),
                                         ("guided_whitespace_pattern", r"[\n ]*"),
                                         ("structured_outputs", {"regex": "a+"})])
def test_unimplemented_peer_extras_are_refused(server, path, body, field, value):
    _error(_post(server, path, {**body, field: value, "max_tokens": 4}), field)


def test_their_no_op_values_are_accepted(server):
    for extra in ({"stop_regex": None}, {"use_beam_search": False}, {"allowed_token_ids": None},
                  {"guided_decoding_backend": "xgrammar"}):
        r = _post(server, "/v1/completions", {"prompt": "x", "max_tokens": 2, **extra})
        assert r.status_code == 200, (extra, r.text)


# ---- behaviours that already held (kept from regressing) ---------------------------------------
def test_zero_top_logprobs_in_chat_and_completions(client):
    chat = client.chat.completions.create(model=MODEL, messages=PICK_CHAT, max_completion_tokens=4,
                                          logprobs=True, top_logprobs=0)
    assert all(t.top_logprobs == [] for t in chat.choices[0].logprobs.content)
    text = client.completions.create(model=MODEL, prompt=[5, 6, 7], max_tokens=4, logprobs=0)
    assert all(len(t) == 1 for t in text.choices[0].logprobs.top_logprobs)


@pytest.mark.parametrize("stream", [False, True])
def test_too_many_chat_top_logprobs_is_a_400(client, stream):
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        out = client.chat.completions.create(model=MODEL, messages=PICK_CHAT, max_tokens=4,
                                             logprobs=True, top_logprobs=21, stream=stream)
        list(out) if stream else None


@pytest.mark.parametrize("logprobs", [0, 1])
def test_echo_with_logprobs_covers_prompt_and_output(client, logprobs):
    for prompt in ("Hello, my name is", [72, 105, 33, 32, 40, 41]):
        c = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0,
                                      echo=True, logprobs=logprobs,
                                      extra_body={"ignore_eos": True}).choices[0]
        n_prompt = len(prompt) if isinstance(prompt, list) else len(prompt.encode())
        lp = c.logprobs
        text = prompt if isinstance(prompt, str) else bytes(prompt).decode()
        assert c.text.startswith(text)
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == n_prompt + 5
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(max(logprobs, 1) <= len(t) <= logprobs + 1 for t in lp.top_logprobs[1:])


def test_parallel_and_batched_streams_carry_one_choice_per_chunk(client):
    finished = {}
    for chunk in client.completions.create(model=MODEL, prompt=["p", "q"], n=3, max_tokens=5,
                                           stream=True, extra_body={"ignore_eos": True}):
        assert len(chunk.choices) == 1
        choice = chunk.choices[0]
        if choice.finish_reason is not None:
            finished[choice.index] = finished.get(choice.index, 0) + 1
    assert finished == {i: 1 for i in range(6)}


def test_tool_choice_that_names_no_declared_tool_is_a_400(server):
    tool = {"type": "function", "function": {"name": "f", "parameters": SCHEMA}}
    named = {"type": "function", "function": {"name": "g"}}
    for extra in ({"tool_choice": named}, {"tools": [tool], "tool_choice": named},
                  {"tools": [tool], "tool_choice": {}}):
        _error(_post(server, "/v1/chat/completions", {"messages": PICK_CHAT, **extra}), "tool_choice")


def test_unknown_fields_on_a_message_are_ignored(server):
    messages = [{"role": "user", "content": "hi", "extra_field": "0"}]
    r = _post(server, "/v1/chat/completions", {"messages": messages, "max_tokens": 2})
    assert r.status_code == 200, r.text


def test_out_of_vocabulary_prompt_ids_are_a_400(server):
    err = _error(_post(server, "/v1/completions", {"prompt": [0, 0, 10**6], "echo": True,
                                                   "max_tokens": 2}), "prompt")
    assert err["param"] == "prompt"


def test_model_list_and_retrieve(client):
    models = list(client.models.list())
    assert len(models) == 1 and isinstance(models[0].model_extra["max_model_len"], int)
    card = client.models.retrieve(MODEL)
    assert card.id == MODEL and card.model_extra["root"] == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
