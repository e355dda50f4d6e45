"""200 concurrent streams, half of whose clients leave early: the rest complete, every abandoned
request is aborted (its KV freed), and the server answers a new request promptly afterwards."""
from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from server_procs import engine_stats, wait_until_idle

from tessera.server.testing import ServerProcess

MODEL = "tiny-qwen3"
SERVER_ARGS = ["--kv-cache-tokens", "16384", "--max-running-requests", "256"]
NUM_REQUESTS = 200
FULL_TOKENS = 24
# Leavers ask for far more than they read: if their disconnect went unnoticed they would keep the
# engine busy (and their KV held) long after the test stops waiting.
LEAVER_TOKENS = 3000


@pytest.fixture(scope="module")
def server():
    with ServerProcess(SERVER_ARGS) as s:
        yield s


async def _full(client: openai.AsyncOpenAI, i: int) -> tuple[str, int]:
    stream = await client.completions.create(
        model=MODEL, prompt=f"request {i}: tell me a story", max_tokens=FULL_TOKENS,
        temperature=0.8, seed=i, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True})
    text, usage, finish = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert usage is not None
    return finish, usage.completion_tokens


async def _leave_streaming(client: openai.AsyncOpenAI, i: int) -> None:
    stream = await client.completions.create(
        model=MODEL, prompt=f"request {i}: never mind", max_tokens=LEAVER_TOKENS, stream=True,
        extra_body={"ignore_eos": True})
    seen = 0
    async for _ in stream:
        seen += 1
        if seen == 3:
            break
    await stream.close()  # drops the connection mid-stream


async def _leave_plain(base_url: str, i: int) -> None:
    # a non-streaming client that gives up: the server must notice without a send failing
    async with httpx.AsyncClient(timeout=0.5) as http:
        with pytest.raises(httpx.TimeoutException):
            await http.post(f"{base_url}/v1/completions", json={
                "prompt": f"request {i}: slow", "max_tokens": LEAVER_TOKENS, "ignore_eos": True})


async def _load(base_url: str) -> list:
    client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0,
                                timeout=300)
    tasks = []
    for i in range(NUM_REQUESTS):
        if i % 2 == 0:
            tasks.append(_full(client, i))
        elif i % 20 == 1:
            tasks.append(_leave_plain(base_url, i))
        else:
            tasks.append(_leave_streaming(client, i))
    results = await asyncio.gather(*tasks)
    await client.close()
    return results


def test_half_disconnect_rest_complete_and_kv_is_freed(server):
    base = server.base_url
    results = asyncio.run(_load(base))
    full = [r for r in results if r is not None]
    assert len(full) == NUM_REQUESTS // 2
    assert all(r == ("length", FULL_TOKENS) for r in full), full[:5]

    # every abandoned request must be aborted, not run to its 3000 tokens
    stats = wait_until_idle(base, 15, "abandoned requests still running")
    assert stats["kv_used_tokens"] == 0
    assert stats["kv_free_tokens"] + stats["kv_cached_tokens"] == stats["kv_pool_size"]
    assert stats["generation_tokens_total"] < NUM_REQUESTS * FULL_TOKENS * 4

    flushed = httpx.post(f"{base}/flush_cache", timeout=30)
    assert flushed.status_code == 200, flushed.text
    stats = engine_stats(base)
    assert stats["kv_free_tokens"] == stats["kv_pool_size"]

    start = time.perf_counter()
    r = httpx.post(f"{base}/v1/completions", timeout=10,
                   json={"prompt": "still there?", "max_tokens": 4})
    assert r.status_code == 200 and time.perf_counter() - start < 1.0
