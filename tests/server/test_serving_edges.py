"""Edges of serving: cross-site requests, idle connections, dropped streams in the metrics, and
/health following the engine's heartbeat."""
from __future__ import annotations

import os
import re
import signal
import socket
import time

import httpx
import pytest

from tessera.server.testing import ServerProcess

# timing bounds: run alone, after the parallel suite (scripts/test.sh)
pytestmark = pytest.mark.serial

ALLOWED = "https://app.example.com"
SERVER_ARGS = ["--kv-cache-tokens", "16384", "--allowed-origins", ALLOWED,
               "--timeout-keep-alive", "1", "--engine-stall-timeout", "1"]
JSON_POSTS = ["/v1/completions", "/v1/chat/completions", "/generate", "/abort_request"]


@pytest.fixture(scope="module")
def server():
    with ServerProcess(SERVER_ARGS) as s:
        yield s


# ---- 3: cross-site requests ---------------------------------------------------------------------
@pytest.mark.parametrize("path", [*JSON_POSTS, "/flush_cache"])
@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded"])
def test_non_json_posts_are_refused_with_415(server, path, ctype):
    # what a web page can send cross-site without a CORS preflight
    r = httpx.post(server.base_url + path, content=b'{"prompt": "hi", "rid": "x"}',
                   headers={"content-type": ctype}, timeout=30)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"


@pytest.mark.parametrize("path", JSON_POSTS)
def test_json_routes_need_a_content_type(server, path):
    r = httpx.post(server.base_url + path, content=b'{"prompt": "hi"}', timeout=30)
    assert r.status_code == 415, r.text


def test_json_with_a_charset_is_accepted(server):
    r = httpx.post(server.base_url + "/v1/completions", timeout=30,
                   content=b'{"prompt": "hi", "max_tokens": 2}',
                   headers={"content-type": "application/json; charset=utf-8"})
    assert r.status_code == 200, r.text


def test_cross_site_posts_are_refused_unless_the_origin_is_allowed(server):
    url = server.base_url + "/flush_cache"
    # a body-less POST (fetch with mode "no-cors") carries no Content-Type, only its Origin
    r = httpx.post(url, headers={"origin": "https://evil.example"}, timeout=30)
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    assert httpx.post(url, headers={"origin": ALLOWED}, timeout=30).status_code == 200
    assert httpx.post(url, headers={"origin": server.base_url}, timeout=30).status_code == 200
    assert httpx.post(url, timeout=30).status_code == 200  # curl, scripts: no Origin


def test_cors_answers_only_the_allowed_origin(server):
    def preflight(origin: str) -> httpx.Response:
        return httpx.options(server.base_url + "/v1/completions", headers={
            "origin": origin, "access-control-request-method": "POST",
            "access-control-request-headers": "content-type"})

    assert preflight(ALLOWED).headers.get("access-control-allow-origin") == ALLOWED
    assert "access-control-allow-origin" not in preflight("https://evil.example").headers


# ---- 8: idle connections ------------------------------------------------------------------------
def _closed_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass  # a response the server sent before closing
        return True
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_are_closed(server):
    host, port = server.host, server.port
    silent = [socket.create_connection((host, port)) for _ in range(50)]
    half = socket.create_connection((host, port))
    half.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # headers never finished
    served = socket.create_connection((host, port))
    served.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    try:
        # --timeout-keep-alive 1: each is closed within about a second of going quiet
        assert all(_closed_within(s, 4.0) for s in [*silent, half, served])
    finally:
        for s in [*silent, half, served]:
            s.close()
    assert httpx.get(server.base_url + "/health").status_code == 200


def test_a_long_stream_outlives_the_keep_alive_timeout(server):
    # the client sends nothing while it reads: that is not an idle connection
    start = time.monotonic()
    with httpx.stream("POST", server.base_url + "/v1/completions", timeout=30, json={
            "prompt": "hi", "max_tokens": 3000, "ignore_eos": True, "stream": True}) as r:
        for _ in r.iter_lines():
            if time.monotonic() - start > 2.5:
                break
    assert time.monotonic() - start > 2.5, "the stream was cut"


# ---- 5: dropped streams in the metrics ----------------------------------------------------------
def _counter(base_url: str, name: str, **labels: str) -> float:
    text = httpx.get(base_url + "/metrics", timeout=10).text
    for line in text.splitlines():
        match = re.match(rf"^{re.escape(name)}{{(.*)}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def test_a_dropped_stream_is_counted_as_an_abort_and_a_disconnect(server):
    base = server.base_url
    aborts = _counter(base, "tessera:request_success_total", finish_reason="abort")
    drops = _counter(base, "tessera:client_disconnects_total")
    with httpx.stream("POST", base + "/v1/completions", timeout=30, json={
            "prompt": "hi", "max_tokens": 3000, "ignore_eos": True, "stream": True}) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i == 4:
                break  # the client leaves mid-stream
    deadline = time.monotonic() + 10
    while _counter(base, "tessera:client_disconnects_total") < drops + 1:
        assert time.monotonic() < deadline, "the disconnect was not counted"
        time.sleep(0.1)
    assert _counter(base, "tessera:request_success_total", finish_reason="abort") == aborts + 1


# ---- 6: /health follows the engine's heartbeat --------------------------------------------------
def _wait_health(base_url: str, status: int, within: float) -> float:
    start = time.monotonic()
    while True:
        code = httpx.get(base_url + "/health", timeout=5).status_code
        elapsed = time.monotonic() - start
        if code == status:
            return elapsed
        assert elapsed < within, f"/health still {code} after {elapsed:.1f} s"
        time.sleep(0.05)


def test_a_stopped_engine_turns_health_503_and_back(server):
    base = server.base_url
    pid = httpx.get(base + "/get_server_info", timeout=10).json()["engine_pid"]
    _wait_health(base, 200, 5)
    os.kill(pid, signal.SIGSTOP)
    try:
        assert _wait_health(base, 503, 2.0) < 2.0
        r = httpx.get(base + "/health", timeout=5)
        assert "has not been heard from" in r.json()["error"]["message"]
    finally:
        os.kill(pid, signal.SIGCONT)
    _wait_health(base, 200, 2.0)
    r = httpx.post(base + "/v1/completions", json={"prompt": "hi", "max_tokens": 2}, timeout=30)
    assert r.status_code == 200
