"""SGLang's native API as its users call it, vLLM's tokenization endpoints, per-choice stop
fields, continuous usage stats and the SGLang-named metrics, against a real `tessera serve`."""
from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tessera.server.testing import ServerProcess

MODEL = "tiny-qwen3"
GREEDY = {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--kv-cache-tokens", "16384"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def post(server, path, body, status=200):
    r = httpx.post(f"{server.base_url}{path}", json=body, timeout=60)
    assert r.status_code == status, r.text
    return r.json()


def test_generate_batch_and_n(server):
    one = [post(server, "/generate", {"text": t, "sampling_params": GREEDY})["text"]
           for t in ("alpha", "beta")]
    batch = post(server, "/generate", {"text": ["alpha", "beta"], "sampling_params": GREEDY})
    assert [b["text"] for b in batch] == one
    sampled = post(server, "/generate", {"text": "alpha", "sampling_params": {
        **GREEDY, "temperature": 1.0, "n": 3, "seed": 1}})
    assert len(sampled) == 3 and len({s["text"] for s in sampled}) > 1
    per_prompt = post(server, "/generate", {"input_ids": [[97, 98], [99]], "sampling_params": [
        {**GREEDY, "max_new_tokens": 2}, {**GREEDY, "max_new_tokens": 4}]})
    assert [len(p["output_ids"]) for p in per_prompt] == [2, 4]


def test_generate_logprobs_match_completions_echo(server, client):
    body = post(server, "/generate", {
        "text": "logprob me", "sampling_params": GREEDY, "return_logprob": True,
        "logprob_start_len": 0, "top_logprobs_num": 2, "return_text_in_logprobs": True})
    meta = body["meta_info"]
    inputs, outs = meta["input_token_logprobs"], meta["output_token_logprobs"]
    assert len(inputs) == len(b"logprob me") and inputs[0][0] is None
    assert [e[1] for e in outs] == body["output_ids"] and len(meta["output_top_logprobs"]) == 5
    echo = client.completions.create(model=MODEL, prompt="logprob me", max_tokens=5, echo=True,
                                     logprobs=2, temperature=0, extra_body={"ignore_eos": True})
    expected = echo.choices[0].logprobs.token_logprobs
    got = [e[0] for e in inputs + outs]
    assert got[0] is None and got[1:] == pytest.approx(expected[1:], abs=1e-5)
    # greedy: the chosen token is the most likely one
    assert all(e[0] == pytest.approx(top[0][0], abs=1e-5)
               for e, top in zip(outs, meta["output_top_logprobs"]))


def test_abort_all(server):
    result: dict = {}

    def long_request():
        result["r"] = httpx.post(f"{server.base_url}/generate", timeout=120, json={
            "text": "abort all of us", "sampling_params": {"max_new_tokens": 3000,
                                                           "ignore_eos": True}})

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{server.base_url}/get_server_info").json()["engine"][
            "num_running_reqs"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert post(server, "/abort_request", {"abort_all": True})["aborted"] == 1
    t.join(30)
    assert result["r"].json()["meta_info"]["finish_reason"]["type"] == "abort"


def test_tokenize_detokenize_and_model_routes(server, client):
    tok = post(server, "/tokenize", {"prompt": "héllo", "return_token_strs": True})
    assert tok["count"] == len("héllo".encode()) and tok["max_model_len"] > 0
    assert post(server, "/detokenize", {"tokens": tok["tokens"]})["prompt"] == "héllo"
    messages = [{"role": "user", "content": "count my tokens"}]
    chat = post(server, "/v1/tokenize", {"messages": messages})
    usage = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=1).usage
    assert chat["count"] == usage.prompt_tokens
    post(server, "/detokenize", {"tokens": [10**9]}, status=400)
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(f"{server.base_url}/v1/models/nope").status_code == 404
    info = httpx.get(f"{server.base_url}/get_model_info").json()
    assert info["is_generation"] is True and info["model_path"] == MODEL


def test_stop_fields_on_each_choice(server, client):
    text = client.completions.create(model=MODEL, prompt="stops", max_tokens=30, temperature=0,
                                     extra_body={"ignore_eos": True}).choices[0].text
    stop = next(text[i:i + 2] for i in range(2, len(text) - 2)
                if text[i:i + 2].isascii() and text[i:i + 2].isprintable())
    out = client.completions.create(model=MODEL, prompt="stops", max_tokens=30, temperature=0,
                                    stop=[stop], extra_body={"ignore_eos": True}).choices[0]
    assert out.finish_reason == "stop"
    assert out.model_extra["stop_reason"] == stop == out.model_extra["matched_stop"]
    first = post(server, "/generate", {"text": "stops", "sampling_params": GREEDY})
    token = first["output_ids"][2]
    by_id = client.completions.create(model=MODEL, prompt="stops", max_tokens=30, temperature=0,
                                      extra_body={"ignore_eos": True,
                                                  "stop_token_ids": [token]}).choices[0]
    assert by_id.model_extra["stop_reason"] == token
    length = client.completions.create(model=MODEL, prompt="x", max_tokens=2).choices[0]
    assert length.finish_reason == "length" and length.model_extra["stop_reason"] is None


def test_continuous_usage_stats(client):
    chunks = list(client.completions.create(
        model=MODEL, prompt="usage", max_tokens=4, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
        extra_body={"ignore_eos": True}))
    counts = [c.usage.completion_tokens for c in chunks if c.choices]
    assert counts == sorted(counts) and counts[-1] == 4 and chunks[-1].usage.completion_tokens == 4


def test_sglang_metric_names(server, client):
    client.completions.create(model=MODEL, prompt="m", max_tokens=3)
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in ("num_queue_reqs", "token_usage", "gen_throughput", "num_running_reqs",
                 "queue_time_seconds_count", "time_per_output_token_seconds_count",
                 "time_to_first_token_seconds_count", "e2e_request_latency_seconds_count"):
        assert any(ln.startswith(f"tessera:{name}{{") for ln in text.splitlines()), name


def test_return_tokens_as_token_ids(server, client):
    ids = post(server, "/generate", {"text": "ids", "sampling_params": GREEDY})["output_ids"]
    lp = client.completions.create(model=MODEL, prompt="ids", max_tokens=5, temperature=0,
                                   logprobs=1, extra_body={"ignore_eos": True,
                                                           "return_tokens_as_token_ids": True}
                                   ).choices[0].logprobs
    assert lp.tokens == [f"token_id:{t}" for t in ids]
    assert all(f"token_id:{t}" in top for t, top in zip(ids, lp.top_logprobs))
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=3, logprobs=True,
        top_logprobs=1, extra_body={"return_tokens_as_token_ids": True})
    assert all(t.token.startswith("token_id:") for t in chat.choices[0].logprobs.content)
