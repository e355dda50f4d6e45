"""Stopping the server: SIGTERM drains for at most --shutdown-timeout, then aborts what still runs
(each stream ends with a finish_reason "abort" chunk and [DONE]) and exits 0; a second signal
exits at once."""
from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import pytest

from tessera.server.testing import ServerProcess

# timing bounds: run alone, after the parallel suite (scripts/test.sh)
pytestmark = pytest.mark.serial

SHUTDOWN_TIMEOUT = 2.0


def _start_streams(base_url: str, count: int) -> tuple[list[list[str]], list[threading.Thread]]:
    """`count` chat streams without max_tokens (they run to the end of the context: minutes)."""
    lines: list[list[str]] = [[] for _ in range(count)]

    def run(i: int) -> None:
        body = {"messages": [{"role": "user", "content": f"story {i}"}], "stream": True,
                "ignore_eos": True}
        try:
            with httpx.stream("POST", base_url + "/v1/chat/completions", json=body,
                              timeout=120) as r:
                for line in r.iter_lines():
                    lines[i].append(line)
        except httpx.HTTPError as e:  # a dropped connection ends the list with its error
            lines[i].append(f"error: {e!r}")

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while not all(len(x) > 6 for x in lines):  # every stream is generating
        assert time.monotonic() < deadline, [x[-2:] for x in lines]
        time.sleep(0.05)
    return lines, threads


def test_sigterm_drains_then_aborts_long_streams_and_exits_0():
    server = ServerProcess(["--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]).start()
    try:
        lines, threads = _start_streams(server.base_url, 8)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(SHUTDOWN_TIMEOUT + 2.0)
        elapsed = time.monotonic() - start
        assert code == 0, server.log_text()[-3000:]
        assert elapsed >= SHUTDOWN_TIMEOUT * 0.9  # it did drain first
        for t in threads:
            t.join(5)
        for stream in lines:
            events = [line for line in stream if line.startswith("data: ")]
            assert events[-1] == "data: [DONE]", stream[-3:]
            last = json.loads(events[-2].removeprefix("data: "))
            assert last["choices"][0]["finish_reason"] == "abort", last
        assert "aborted 8 running request(s)" in server.log_text()
    finally:
        server.stop()


def test_a_second_signal_exits_at_once():
    server = ServerProcess(["--shutdown-timeout", "120"]).start()
    try:
        _lines, threads = _start_streams(server.base_url, 2)
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)  # uvicorn alone forces only on SIGINT
        server.proc.wait(3.0)
        assert time.monotonic() - start < 3.0
        for t in threads:
            t.join(5)
            assert not t.is_alive(), "a stream hung after the server exited"
    finally:
        server.stop()
