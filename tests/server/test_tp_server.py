"""`tessera serve --tp 2` on CPU (gloo): the OpenAI client gets the TP=1 model's answers, a rank
killed mid-stream ends the stream with an error and every process exits, and two commands on one
machine (loopback) serve as two nodes."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
from server_procs import child_pids, wait_until_idle

from tessera import LLM, SamplingParams
from tessera.server.testing import ServerProcess, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")

ARGS = ["--model-path", "tiny-llama", "--kv-cache-tokens", "4096", "--max-running-requests", "4",
        "--dist-timeout", "30"]
PROMPT = "The quick brown fox"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _reference_text() -> str:
    with LLM("tiny-llama", kv_cache_tokens=1024, max_running_requests=2) as llm:
        params = SamplingParams(temperature=0.0, max_new_tokens=8, ignore_eos=True)
        return llm.generate(PROMPT, params)[0].text


def test_serve_tp2_answers_the_openai_client_like_tp1():
    expected = _reference_text()
    with ServerProcess([*ARGS, "--tp", "2"]) as server:
        client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="x", timeout=60)
        whole = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=8,
                                          temperature=0, extra_body={"ignore_eos": True})
        assert whole.choices[0].text == expected
        assert whole.usage.completion_tokens == 8
        pieces = client.completions.create(model="tiny-llama", prompt=PROMPT, max_tokens=8,
                                           temperature=0, stream=True,
                                           extra_body={"ignore_eos": True})
        assert "".join(c.choices[0].text for c in pieces if c.choices) == expected
        assert "tensor parallel: 2 ranks" in server.log_text()
        _disconnect_frees_kv(server.base_url)


def _disconnect_frees_kv(base: str) -> None:
    """A stream the client drops mid-way is aborted: the rows and slots that rank 0 handed out
    for it (every rank writes the same slots through the batch plan) are free again, and the
    next request on the TP engine is answered."""
    body = {"prompt": PROMPT, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=60) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 6:
                break  # leave with the stream open: the server sees the disconnect
    stats = wait_until_idle(base, 15, "the dropped stream still runs")
    assert stats["kv_used_tokens"] == 0
    assert stats["kv_free_tokens"] + stats["kv_cached_tokens"] == stats["kv_pool_size"]
    assert stats["generation_tokens_total"] < 2000
    r = httpx.post(f"{base}/v1/completions", timeout=30,
                   json={"prompt": "still there?", "max_tokens": 4})
    assert r.status_code == 200


def test_rank_killed_mid_stream_ends_the_stream_and_every_process():
    server = ServerProcess([*ARGS, "--tp", "2"]).start()
    try:
        # the server's children: the engine (rank 0) and multiprocessing's resource tracker
        engines = [pid for pid in child_pids(server.proc.pid) if child_pids(pid)]
        ranks = [pid for engine in engines for pid in child_pids(engine)]
        assert len(engines) == 1 and len(ranks) == 1, (engines, ranks)
        lines: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", server.base_url + "/v1/completions", timeout=60, json={
                    "prompt": "hi", "max_tokens": 3000, "ignore_eos": True, "stream": True}) as r:
                lines.extend(r.iter_lines())

        reader = threading.Thread(target=stream)
        reader.start()
        deadline = time.monotonic() + 30
        while sum(line.startswith("data: ") for line in lines) < 3:  # tokens are flowing
            assert time.monotonic() < deadline, "no tokens streamed"
            time.sleep(0.05)
        os.kill(ranks[0], signal.SIGKILL)
        killed = time.monotonic()
        reader.join(10)
        assert not reader.is_alive(), "the stream hung after a rank died"
        events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert "the engine stopped" in events[-2] and '"error"' in events[-2]
        assert server.proc.wait(10) == 1
        while any(_alive(pid) for pid in engines) and time.monotonic() - killed < 10:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in engines + ranks), "a process outlived the rank"
        assert time.monotonic() - killed < 10
    finally:
        server.stop()


def test_two_nodes_on_loopback():
    """Node 1 runs rank 1 only; node 0 runs rank 0 and serves. Stopping node 0 stops node 1."""
    addr = f"127.0.0.1:{free_port()}"
    multi = ["--tp", "2", "--nnodes", "2", "--dist-init-addr", addr]
    node1 = subprocess.Popen([sys.executable, "-m", "tessera.launch_server", *ARGS, *multi,
                              "--node-rank", "1"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        with ServerProcess([*ARGS, *multi, "--node-rank", "0"]) as server:
            r = httpx.post(server.base_url + "/v1/completions", timeout=60, json={
                "prompt": PROMPT, "max_tokens": 8, "temperature": 0, "ignore_eos": True})
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"] == _reference_text()
            assert node1.poll() is None
        assert node1.wait(20) == 0  # rank 0's stop plan ends node 1's rank cleanly
        assert "every rank stopped" in node1.stdout.read()
    finally:
        if node1.poll() is None:
            node1.kill()
            node1.wait()
