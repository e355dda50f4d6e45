"""The OpenAI-compatible API against a real `tessera serve` (tiny-qwen3 on CPU), through the
official openai client where it applies."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest

from tessera.server.testing import ServerProcess

MODEL = "tiny-qwen3"
SERVER_ARGS = ["--kv-cache-tokens", "16384", "--max-running-requests", "256"]


@pytest.fixture(scope="module")
def server():
    with ServerProcess(SERVER_ARGS) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def _greedy(client, prompt, max_tokens=16, **kw):
    return client.completions.create(model=MODEL, prompt=prompt, max_tokens=max_tokens,
                                     temperature=0, extra_body={"ignore_eos": True}, **kw)


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_completion_text_usage_and_length(client):
    out = _greedy(client, "Hello world", max_tokens=12)
    choice = out.choices[0]
    assert out.object == "text_completion" and out.model == MODEL
    assert choice.finish_reason == "length" and len(choice.text) > 0
    # the preset's byte tokenizer: one token per byte
    assert out.usage.prompt_tokens == len(b"Hello world")
    assert out.usage.completion_tokens == 12
    assert out.usage.total_tokens == 12 + len(b"Hello world")
    assert out.usage.prompt_tokens_details.cached_tokens == 0


def test_greedy_matches_the_offline_engine(client):
    from tessera import LLM, SamplingParams

    prompt = "The quick brown fox"
    served = _greedy(client, prompt, max_tokens=10, logprobs=0).choices[0]
    llm = LLM(kv_cache_tokens=4096)
    offline = llm.generate([prompt], SamplingParams(max_new_tokens=10, temperature=0,
                                                    ignore_eos=True))[0]
    assert served.text == offline.text
    assert len(served.logprobs.tokens) == 10


def test_seeded_sampling_is_reproducible(client):
    kw = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 16, "temperature": 1.0,
          "seed": 1234, "extra_body": {"ignore_eos": True}}
    a = client.completions.create(**kw).choices[0].text
    b = client.completions.create(**kw).choices[0].text
    assert a == b


def test_cached_tokens_reported_for_a_repeated_prompt(client):
    prompt = "A long shared prefix that the radix cache should keep around. " * 4
    _greedy(client, prompt, max_tokens=2)
    again = _greedy(client, prompt, max_tokens=2)
    assert again.usage.prompt_tokens_details.cached_tokens > 0


def test_chat_completion(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi there"}],
        max_completion_tokens=8, temperature=0, extra_body={"ignore_eos": True})
    assert out.object == "chat.completion"
    msg = out.choices[0].message
    assert msg.role == "assistant" and isinstance(msg.content, str)
    assert out.usage.completion_tokens == 8 and out.choices[0].finish_reason == "length"
    # ChatML from the byte tokenizer: the template wraps each message
    assert out.usage.prompt_tokens > len("Be brief.Hi there")


def test_streaming_equals_non_streaming_and_reports_usage(client):
    full = _greedy(client, "Streaming test", max_tokens=20).choices[0].text
    chunks = list(client.completions.create(
        model=MODEL, prompt="Streaming test", max_tokens=20, temperature=0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == full
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "length" and all(f is None for f in finishes[:-1])


def test_chat_streaming_deltas(client):
    chunks = list(client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "count"}], max_tokens=6,
        temperature=0, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-2].choices[0].finish_reason == "length"


def test_n_samples(client):
    out = client.completions.create(model=MODEL, prompt="Pick", max_tokens=8, n=2,
                                    temperature=1.0, seed=7, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1]
    assert out.choices[0].text != out.choices[1].text
    assert out.usage.completion_tokens == 16 and out.usage.prompt_tokens == 4


def test_batched_prompts_with_n(client):
    out = client.completions.create(model=MODEL, prompt=["one", "two three"], max_tokens=3,
                                    n=2, temperature=0, extra_body={"ignore_eos": True})
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    assert out.usage.prompt_tokens == 3 + 9 and out.usage.completion_tokens == 12


def test_stop_string_ends_the_text_before_it(client):
    text = _greedy(client, "Stop here", max_tokens=40).choices[0].text
    k = next(i for i in range(3, len(text) - 1) if text[i:i + 2].isascii()
             and text[i:i + 2].isalnum())
    stop = text[k:k + 2]
    out = client.completions.create(model=MODEL, prompt="Stop here", max_tokens=40,
                                    temperature=0, stop=[stop, "never-matches"],
                                    extra_body={"ignore_eos": True}).choices[0]
    assert out.finish_reason == "stop"
    assert out.text == text[:text.find(stop)]


def test_completion_logprobs(client):
    lp = _greedy(client, "Logprobs", max_tokens=5, logprobs=3).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 5
    for chosen, top in zip(lp.token_logprobs, lp.top_logprobs):
        assert chosen <= 0 and 1 <= len(top) <= 3
        assert chosen == pytest.approx(max(top.values()), abs=1e-4)  # greedy picks the best


def test_chat_logprobs(client):
    out = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], max_tokens=4, temperature=0,
        logprobs=True, top_logprobs=2, extra_body={"ignore_eos": True})
    content = out.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in content)


def test_native_generate(server):
    r = httpx.post(f"{server.base_url}/generate", json={
        "text": "Native", "sampling_params": {"max_new_tokens": 5, "temperature": 0,
                                              "ignore_eos": True}}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["output_ids"]) == 5 and body["meta_info"]["finish_reason"]["type"] == "length"
    ids = httpx.post(f"{server.base_url}/generate", json={
        "input_ids": [78, 97, 116, 105, 118, 101], "stream": True,
        "sampling_params": {"max_new_tokens": 5, "temperature": 0, "ignore_eos": True}},
        timeout=30)
    events = [line[6:] for line in ids.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["text"] == body["text"]  # same prompt bytes, greedy


def test_health_and_health_generate(server):
    assert httpx.get(f"{server.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/health_generate", timeout=30).status_code == 200


def test_metrics(client, server):
    _greedy(client, "metrics", max_tokens=4)
    text = httpx.get(f"{server.base_url}/metrics").text
    for name in ("num_running_reqs", "num_queued_reqs", "kv_usage_ratio", "kv_free_tokens",
                 "kv_used_tokens", "cache_hit_rate", "prompt_tokens_total",
                 "generation_tokens_total", "time_to_first_token_seconds_count",
                 "inter_token_latency_seconds_count", "e2e_request_latency_seconds_count"):
        line = next(ln for ln in text.splitlines() if ln.startswith(f"tessera:{name}{{"))
        assert f'model_name="{MODEL}"' in line
    gen = next(ln for ln in text.splitlines() if ln.startswith("tessera:generation_tokens_total"))
    assert float(gen.rsplit(" ", 1)[1]) >= 4


def test_abort_request_and_flush_cache(server):
    base = server.base_url
    result: dict = {}

    def long_request():
        result["r"] = httpx.post(f"{base}/generate", timeout=120, json={
            "text": "abort me", "rid": "abort-me",
            "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}})

    t = threading.Thread(target=long_request)
    t.start()
    deadline = time.monotonic() + 30
    while httpx.get(f"{base}/get_server_info").json()["engine"]["num_running_reqs"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    busy = httpx.post(f"{base}/flush_cache")
    assert busy.status_code == 400 and "running" in busy.json()["error"]["message"]
    assert httpx.post(f"{base}/abort_request", json={"rid": "abort-me"}).status_code == 200
    t.join(30)
    meta = result["r"].json()["meta_info"]
    assert meta["finish_reason"]["type"] == "abort" and meta["completion_tokens"] < 3000
    assert httpx.post(f"{base}/abort_request", json={"rid": "abort-me"}).status_code == 404
    assert httpx.post(f"{base}/flush_cache").status_code == 200
    stats = httpx.get(f"{base}/get_server_info").json()["engine"]
    assert stats["kv_free_tokens"] == stats["kv_pool_size"]


def test_bad_model_path_fails_startup_with_a_clear_message(tmp_path):
    missing = tmp_path / "no-such-model"
    proc = subprocess.run([sys.executable, "-m", "tessera.launch_server", "--model-path",
                           str(missing), "--port", "0"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode != 0
    assert "engine failed to start" in proc.stderr and str(missing) in proc.stderr
