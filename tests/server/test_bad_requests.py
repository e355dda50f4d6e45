"""Every invalid request is a 400 in OpenAI's error shape whose message names the field, and the
server stays healthy afterwards (never a 500 for user input)."""
from __future__ import annotations

import httpx
import pytest

from tessera.server.testing import ServerProcess

API_KEY = "sk-test-key"
# the byte tokenizer has no single </think> token: a constraint cannot start after reasoning
SERVER_ARGS = ["--kv-cache-tokens", "16384", "--max-running-requests", "256", "--api-key", API_KEY,
               "--reasoning-parser", "qwen3"]
AUTH = {"Authorization": f"Bearer {API_KEY}"}
C, CHAT, GEN = "/v1/completions", "/v1/chat/completions", "/generate"
P = {"prompt": "hello", "max_tokens": 4}           # a valid completion body to spoil
M = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

# (id, path, JSON body or raw bytes, a word the error message must contain)
CASES = [
    ("temperature-string", C, {**P, "temperature": "abc"}, "temperature"),
    ("temperature-negative", C, {**P, "temperature": -1}, "temperature"),
    ("temperature-too-high", C, {**P, "temperature": 5}, "temperature"),
    ("top_p-zero", C, {**P, "top_p": 0}, "top_p"),
    ("top_p-above-one", C, {**P, "top_p": 1.5}, "top_p"),
    ("max_tokens-negative", C, {**P, "max_tokens": -5}, "max_tokens"),
    ("max_tokens-string", C, {**P, "max_tokens": "16"}, "max_tokens"),
    ("max_tokens-fraction", C, {**P, "max_tokens": 1.5}, "max_tokens"),
    ("n-zero", C, {**P, "n": 0}, "n"),
    ("n-bool", C, {**P, "n": True}, "n"),
    ("n-huge", C, {**P, "n": 1000}, "n"),
    ("logprobs-too-many", C, {**P, "logprobs": 50}, "logprobs"),
    ("stop-number", C, {**P, "stop": 5}, "stop"),
    ("stop-empty-string", C, {**P, "stop": [""]}, "stop"),
    ("frequency_penalty-range", C, {**P, "frequency_penalty": 3}, "frequency_penalty"),
    ("presence_penalty-string", C, {**P, "presence_penalty": "high"}, "presence_penalty"),
    ("top_k-zero", C, {**P, "top_k": 0}, "top_k"),
    ("min_p-range", C, {**P, "min_p": 2}, "min_p"),
    ("repetition_penalty-zero", C, {**P, "repetition_penalty": 0}, "repetition_penalty"),
    ("seed-string", C, {**P, "seed": "x"}, "seed"),
    ("unknown-model", C, {**P, "model": "gpt-4"}, "model"),
    ("prompt-missing", C, {"max_tokens": 4}, "prompt"),
    ("prompt-number", C, {**P, "prompt": 123}, "prompt"),
    ("prompt-empty-list", C, {**P, "prompt": []}, "prompt"),
    ("prompt-mixed-list", C, {**P, "prompt": [1, "a"]}, "prompt"),
    ("prompt-empty-string", C, {**P, "prompt": ""}, "prompt"),
    ("prompt-token-out-of-vocab", C, {**P, "prompt": [1, 999999]}, "prompt"),
    ("prompt-over-context", C, {**P, "prompt": "a" * 5000}, "prompt"),
    ("max_tokens-over-kv-pool", C, {**P, "max_tokens": 100000}, "max_tokens"),
    ("min_tokens-over-max", C, {**P, "min_tokens": 10}, "min_tokens"),
    ("stream-string", C, {**P, "stream": "yes"}, "stream"),
    ("stream_options-without-stream", C, {**P, "stream_options": {"include_usage": True}},
     "stream_options"),
    ("ignore_eos-string", C, {**P, "ignore_eos": "true"}, "ignore_eos"),
    ("suffix-refused", C, {**P, "suffix": "tail"}, "suffix"),
    ("max_tokens-zero-without-echo", C, {**P, "max_tokens": 0}, "max_tokens"),
    ("logit_bias-out-of-vocab", C, {**P, "logit_bias": {"999999": 5}}, "logit_bias"),
    ("logit_bias-value-range", C, {**P, "logit_bias": {"5": 500}}, "logit_bias"),
    ("logit_bias-key-not-id", C, {**P, "logit_bias": {"abc": 1}}, "logit_bias"),
    ("regex-invalid", C, {**P, "regex": "a(b"}, "regex"),
    ("two-constraints", C, {**P, "regex": "a", "ebnf": "root ::= \"a\""}, "ebnf"),
    ("json_schema-invalid", CHAT, {**M, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "foo"}}}},
     "response_format"),
    ("response_format-type", CHAT, {**M, "response_format": {"type": "yaml"}},
     "response_format"),
    ("tool_choice-unknown-function", CHAT, {**M, "tools": [
        {"type": "function", "function": {"name": "f"}}],
        "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ("tool_choice-auto-without-parser", CHAT, {**M, "tools": [
        {"type": "function", "function": {"name": "f"}}], "tool_choice": "auto"},
     "tool_choice"),
    ("audio-refused", CHAT, {**M, "audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ("modalities-audio-refused", CHAT, {**M, "modalities": ["text", "audio"]}, "modalities"),
    ("functions-refused", CHAT, {**M, "functions": [{"name": "f"}]}, "functions"),
    ("reasoning_effort-refused", CHAT, {**M, "reasoning_effort": "high"}, "reasoning_effort"),
    ("store-refused", CHAT, {**M, "store": True}, "store"),
    ("prediction-refused", CHAT, {**M, "prediction": {"type": "content", "content": "x"}},
     "prediction"),
    ("web_search_options-refused", CHAT, {**M, "web_search_options": {}},
     "web_search_options"),
    ("continue_final_message-needs-assistant", CHAT, {**M, "continue_final_message": True},
     "continue_final_message"),
    ("malformed-json", C, b'{"prompt": "hi", "max_tokens": ', "json"),
    ("body-not-object", C, b"[1, 2, 3]", "object"),
    ("body-empty", C, b"", "empty"),
    ("messages-empty", CHAT, {**M, "messages": []}, "messages"),
    ("messages-missing", CHAT, {"max_tokens": 4}, "messages"),
    ("role-unknown", CHAT, {**M, "messages": [{"role": "robot", "content": "x"}]}, "role"),
    ("content-number", CHAT, {**M, "messages": [{"role": "user", "content": 5}]}, "content"),
    ("content-image-part", CHAT, {**M, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, "content"),
    ("top_logprobs-without-logprobs", CHAT, {**M, "top_logprobs": 2}, "top_logprobs"),
    ("top_logprobs-range", CHAT, {**M, "logprobs": True, "top_logprobs": 30}, "top_logprobs"),
    ("chat-logprobs-int", CHAT, {**M, "logprobs": 3}, "logprobs"),
    ("max_completion_tokens-zero", CHAT, {**M, "max_completion_tokens": 0},
     "max_completion_tokens"),
    ("chat-unknown-model", CHAT, {**M, "model": "nope"}, "model"),
    ("generate-unknown-param", GEN, {"text": "x", "sampling_params": {"temprature": 1}},
     "temprature"),
    ("generate-text-and-ids", GEN, {"text": "x", "input_ids": [1]}, "input_ids"),
    ("generate-bad-temperature", GEN, {"text": "x", "sampling_params": {"temperature": "hot"}},
     "temperature"),
    ("generate-ids-out-of-vocab", GEN, {"input_ids": [-1]}, "prompt"),
    ("abort-missing-rid", "/abort_request", {}, "rid"),
    ("response_format-while-thinking-without-a-think-token", CHAT,
     {**M, "response_format": {"type": "json_object"}}, "response_format"),
    ("tool_choice-while-thinking-without-a-think-token", CHAT,
     {**M, "tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "required"},
     "tool_choice"),
    ("generate-require_reasoning-without-constraint", GEN,
     {"text": "x", "sampling_params": {"require_reasoning": True}}, "require_reasoning"),
    ("generate-require_reasoning-not-bool", GEN,
     {"text": "x", "sampling_params": {"regex": "a", "require_reasoning": "yes"}},
     "require_reasoning"),
]


@pytest.fixture(scope="module")
def base_url():
    with ServerProcess(SERVER_ARGS) as s:
        yield s.base_url


@pytest.mark.parametrize("path,body,word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_request_is_a_400_naming_the_field(base_url, path, body, word):
    if isinstance(body, bytes):
        r = httpx.post(base_url + path, content=body,
                       headers={"content-type": "application/json", **AUTH}, timeout=30)
    else:
        r = httpx.post(base_url + path, json=body, headers=AUTH, timeout=30)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert word.lower() in err["message"].lower(), err
    if path == GEN and "sampling_params" in body:
        assert err["param"].startswith("sampling_params"), err
    elif word not in ("json", "object", "empty", "prompt"):
        assert err["param"] is not None and word.split("_")[0] in err["param"], err


def test_api_key_is_required_on_v1(base_url):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = httpx.post(base_url + C, json=P, headers=headers)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(base_url + "/v1/models", headers=AUTH).status_code == 200


@pytest.mark.parametrize("method,path,body,authorized", [
    ("post", GEN, {"text": "x", "sampling_params": {"max_new_tokens": 2}}, 200),
    ("post", "/abort_request", {"rid": "someone-elses"}, 404),  # no such request: not a 401
    ("post", "/flush_cache", None, 200),
    ("get", "/get_server_info", None, 200),
])
def test_api_key_is_required_on_native_and_admin_routes(base_url, method, path, body, authorized):
    kw = {"json": body} if body is not None else {}
    r = getattr(httpx, method)(base_url + path, timeout=30, **kw)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = getattr(httpx, method)(base_url + path, headers=AUTH, timeout=30, **kw)
    assert r.status_code == authorized, r.text


def test_thinking_off_lifts_the_think_token_requirement(base_url):
    body = {**M, "response_format": {"type": "json_object"},
            "chat_template_kwargs": {"enable_thinking": False}}
    r = httpx.post(base_url + CHAT, json=body, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text


def test_liveness_and_metrics_stay_open(base_url):
    for path in ("/health", "/metrics"):
        assert httpx.get(base_url + path).status_code == 200


def test_unknown_model_uses_openais_code(base_url):
    r = httpx.post(base_url + C, json={**P, "model": "gpt-4"}, headers=AUTH)
    assert r.json()["error"]["code"] == "model_not_found"


def test_other_errors_keep_the_shape(base_url):
    r = httpx.get(base_url + "/v1/nothing-here", headers=AUTH)
    assert r.status_code == 404 and "message" in r.json()["error"]
    r = httpx.get(base_url + C, headers=AUTH)
    assert r.status_code == 405 and "message" in r.json()["error"]


def test_server_is_healthy_after_bad_requests(base_url):
    # /health_generate runs a generation: with a key set, it needs the key like /generate
    assert httpx.get(base_url + "/health_generate", timeout=30).status_code == 401
    assert httpx.get(base_url + "/health_generate", headers=AUTH, timeout=30).status_code == 200
    stats = httpx.get(base_url + "/get_server_info", headers=AUTH).json()["engine"]
    assert stats["num_running_reqs"] == 0 and stats["num_queued_reqs"] == 0
    ok = httpx.post(base_url + C, json=P, headers=AUTH, timeout=30)
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] >= 1


# ---- fuzz: random values in random fields -----------------------------------------------------
_JUNK = [None, True, False, 0, 1, -1, 2, 3.5, 1e308, -1e308, "", "x", "1", [], [1], ["a"], [[1]],
         {}, {"a": 1}, 10**20, -10**20, 0.5, 128, 4097, [0, 1, 2], ["stop", ""], [None]]
_COMPLETION_FIELDS = [
    "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stop",
    "logprobs", "echo", "seed", "frequency_penalty", "presence_penalty", "repetition_penalty",
    "min_tokens", "ignore_eos", "stream_options", "model", "user", "logit_bias", "best_of",
    "suffix", "skip_special_tokens", "stop_token_ids", "max_completion_tokens"]
_CHAT_FIELDS = [
    "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stop", "logprobs", "top_logprobs", "seed", "stream_options", "model", "tools",
    "response_format", "tool_choice", "frequency_penalty", "presence_penalty"]
_ODD_MESSAGES = [
    [{"role": "user"}], [{"role": "system", "content": "s"}], [{"content": "x"}], ["hi"],
    [{"role": "assistant", "content": "a"}, {"role": "user", "content": [{"type": "text",
                                                                          "text": "t"}]}],
    [{"role": "user", "content": None}], [{"role": "tool", "content": "x"}]]


def test_random_bodies_are_answered_200_or_400_never_500(base_url):
    """Valid bodies spoiled with 1-3 random values in random fields (seeded): every answer is a
    200 or a 400 in the error shape, and nothing is left running afterwards."""
    import json
    import random

    rng = random.Random(1234)
    with httpx.Client(timeout=60, headers=AUTH) as client:
        for _ in range(150):
            chat = rng.random() < 0.4
            body = dict(M if chat else P)
            for _ in range(rng.randint(1, 3)):
                body[rng.choice(_CHAT_FIELDS if chat else _COMPLETION_FIELDS)] = rng.choice(_JUNK)
            if chat and rng.random() < 0.3:
                body["messages"] = rng.choice(_ODD_MESSAGES)
            r = client.post(base_url + (CHAT if chat else C), content=json.dumps(body),
                            headers={"content-type": "application/json"})
            assert r.status_code in (200, 400), (body, r.status_code, r.text[:300])
            if r.status_code == 400:
                assert set(r.json()["error"]) == {"message", "type", "param", "code"}, body
        stats = client.get(base_url + "/get_server_info").json()["engine"]
    assert stats["num_running_reqs"] == 0 and stats["num_queued_reqs"] == 0
    assert stats["kv_used_tokens"] == 0


def test_oversized_bodies_are_refused_with_413(base_url):
    """Declared (Content-Length) or streamed (chunked) bodies past the limit are refused without
    being buffered whole; the server stays healthy."""
    from tessera.server.errors import MAX_BODY_BYTES

    big = b'{"prompt": "' + b"a" * (MAX_BODY_BYTES + 10) + b'"}'
    headers = {"content-type": "application/json", **AUTH}
    r = httpx.post(base_url + C, content=big, headers=headers, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"

    def chunked():
        for i in range(0, len(big), 1 << 20):
            yield big[i:i + (1 << 20)]

    r = httpx.post(base_url + C, content=chunked(), headers=headers, timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert httpx.post(base_url + C, json=P, headers=AUTH, timeout=30).status_code == 200
