"""A slow request never stalls the others: while three 30 MiB prompts are read, validated and
refused, /health answers within 100 ms and 16 running streams keep their inter-token gap under
200 ms (parsing and tokenizing run in worker processes, not on the event loop)."""
from __future__ import annotations

import itertools
import os
import threading
import time

import httpx
import pytest

from tessera.server.testing import ServerProcess

# timing bounds: run alone, after the parallel suite (scripts/test.sh). The client (16 streams,
# three uploads), the server, the engine and two tokenizer workers each want a core: with fewer
# than 4 the budgets measure CPU starvation, not the server (on 2 cores /health p99 came out
# 100-230 ms with and without other load on the host, inter-token gaps up to 640 ms).
pytestmark = [pytest.mark.serial,
              pytest.mark.skipif((os.cpu_count() or 1) < 4,
                                 reason="needs >= 4 cores to measure the latency budgets")]

BIG = 30 << 20
NUM_STREAMS = 16


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--kv-cache-tokens", "65536"]) as s:
        yield s


class _Streams:
    """NUM_STREAMS completions streaming one event per token (logprobs on), timestamped."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.times: list[list[float]] = [[] for _ in range(NUM_STREAMS)]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(NUM_STREAMS)]

    def _run(self, i: int) -> None:
        body = {"prompt": f"stream {i}", "max_tokens": 3000, "ignore_eos": True, "stream": True,
                "logprobs": 0}
        with httpx.stream("POST", self.base_url + "/v1/completions", json=body, timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    self.times[i].append(time.perf_counter())
                if self.stop.is_set():
                    return

    def max_gap(self, i: int, start: float, end: float) -> float:
        t = self.times[i]
        return max((b - a for a, b in itertools.pairwise(t) if b >= start and a <= end),
                   default=0.0)


def _p99(values: list[float]) -> float:
    return sorted(values)[int(len(values) * 0.99)] if values else 0.0


def test_large_prompts_do_not_stall_health_or_streams(server):
    base = server.base_url
    body = b'{"prompt": "' + b"a" * BIG + b'", "max_tokens": 4}'
    streams = _Streams(base)
    for t in streams.threads:
        t.start()
    deadline = time.monotonic() + 60
    while not all(len(t) >= 10 for t in streams.times):
        assert time.monotonic() < deadline, "the streams did not start"
        time.sleep(0.05)

    probes: list[tuple[float, float, int]] = []  # (when, latency, status) of each /health
    done = threading.Event()

    def poll_health() -> None:
        with httpx.Client(timeout=10) as client:
            while not done.is_set():
                t = time.perf_counter()
                status = client.get(base + "/health").status_code
                probes.append((t, time.perf_counter() - t, status))
                time.sleep(0.02)

    answers: list[httpx.Response] = []

    def post_big() -> None:
        answers.append(httpx.post(base + "/v1/completions", content=body, timeout=120,
                                  headers={"content-type": "application/json"}))

    poller = threading.Thread(target=poll_health)
    poller.start()
    # the same measures without the large prompts: a host too busy to meet the budgets on its own
    # (other jobs on its cores) cannot tell whether the large prompts stall anything
    quiet_start = time.perf_counter()
    time.sleep(1.5)
    start = time.perf_counter()
    big = [threading.Thread(target=post_big) for _ in range(3)]
    for t in big:
        t.start()
    for t in big:
        t.join(120)
    end = time.perf_counter()
    done.set()
    poller.join(10)
    streams.stop.set()
    for t in streams.threads:
        t.join(30)

    assert [r.status_code for r in answers] == [400] * 3, [r.text[:200] for r in answers]
    assert all("context length" in r.json()["error"]["message"] for r in answers)
    quiet_health = _p99([lat for t, lat, _ in probes if t < start])
    quiet_gap = max(streams.max_gap(i, quiet_start, start) for i in range(NUM_STREAMS))
    if quiet_health >= 0.1 or quiet_gap >= 0.2:
        pytest.skip(f"host too busy to measure: without large prompts /health p99 "
                    f"{quiet_health * 1000:.0f} ms, inter-token gap {quiet_gap * 1000:.0f} ms")
    assert all(status == 200 for _, _, status in probes), probes
    health = [lat for t, lat, _ in probes if start <= t <= end]
    assert len(health) >= 10, f"{len(health)} /health probes in {end - start:.1f} s"
    assert _p99(health) < 0.1, f"/health p99 {_p99(health) * 1000:.0f} ms over {len(health)}"
    gap = max(streams.max_gap(i, start, end) for i in range(NUM_STREAMS))
    assert gap < 0.2, f"largest inter-token gap {gap * 1000:.0f} ms"
