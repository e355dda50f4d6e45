"""Starting the server: a taken port and bad server flags fail in seconds with one line (before
the model loads), and the API key can come from the environment or a file instead of argv."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import pytest

from tessera.config.engine import ServerConfig
from tessera.server.options import resolve_server_config
from tessera.server.testing import ServerProcess, free_port


def _launch(*args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tessera.launch_server", "--host", "127.0.0.1", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_two_servers_on_one_port_the_second_fails_fast_with_one_line():
    port = str(free_port())
    start = time.monotonic()
    # started together: both pass a bind() that is not followed at once by listen()
    first, second = _launch("--port", port), _launch("--port", port)
    procs = {first, second}
    try:
        loser, ended = None, None
        while time.monotonic() - start < 60 and loser is None:
            for p in procs:
                if p.poll() is not None:
                    loser, ended = p, time.monotonic()
            time.sleep(0.02)
        assert loser is not None, "neither server failed: both claim the port"
        out = loser.stdout.read()
        lines = [line for line in out.splitlines() if line.strip()]
        assert loser.returncode == 1, out
        assert len(lines) == 1 and "cannot listen on" in lines[0], out
        assert ended - start < 3.0, f"the loser took {ended - start:.1f} s to fail:\n{out}"
        winner = (procs - {loser}).pop()
        deadline = time.monotonic() + 60
        while True:  # the winner serves
            assert winner.poll() is None, winner.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
            p.wait(30)


@pytest.mark.parametrize("fields,flag", [
    ({"shutdown_timeout": -1.0}, "--shutdown-timeout"),
    ({"engine_stall_timeout": 0.0}, "--engine-stall-timeout"),
    ({"timeout_keep_alive": float("nan")}, "--timeout-keep-alive"),
    ({"tokenizer_workers": 0}, "--tokenizer-workers"),
    ({"allowed_origins": ["example.com/"]}, "--allowed-origins"),
    ({"api_key_file": "/nonexistent/key"}, "--api-key-file"),
    ({"port": 70000}, "--port"),
])
def test_bad_server_flags_are_named(fields, flag):
    with pytest.raises(ValueError, match=flag):
        resolve_server_config(ServerConfig(**fields), {})


def test_a_bad_server_flag_fails_with_one_line_before_the_model_loads():
    proc = _launch("--port", str(free_port()), "--shutdown-timeout", "-1")
    out, _ = proc.communicate(timeout=60)
    lines = [line for line in out.splitlines() if line.strip()]
    assert proc.returncode == 2, out
    assert len(lines) == 1 and "--shutdown-timeout" in lines[0], out


def test_api_key_sources_and_precedence(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    resolve = resolve_server_config
    assert resolve(ServerConfig(), {}).api_key is None
    assert resolve(ServerConfig(), {"TESSERA_API_KEY": "sk-env"}).api_key == "sk-env"
    from_file = resolve(ServerConfig(api_key_file=str(key_file)), {"TESSERA_API_KEY": "sk-env"})
    assert from_file.api_key == "sk-from-file" and from_file.api_key_file is None
    assert resolve(ServerConfig(api_key="sk-flag"), {"TESSERA_API_KEY": "x"}).api_key == "sk-flag"
    with pytest.raises(ValueError, match="not both"):
        resolve(ServerConfig(api_key="a", api_key_file=str(key_file)), {})
    key_file.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        resolve(ServerConfig(api_key_file=str(key_file)), {})
    with pytest.raises(ValueError, match="TESSERA_API_KEY"):
        resolve(ServerConfig(), {"TESSERA_API_KEY": " "})


def test_api_key_from_a_file_stays_out_of_the_process_list(tmp_path):
    key_file = tmp_path / "key"
    key_file.write_text("sk-secret-from-file\n")
    auth = {"Authorization": "Bearer sk-secret-from-file"}
    with ServerProcess(["--api-key-file", str(key_file)]) as server:
        with open(f"/proc/{server.proc.pid}/cmdline", "rb") as f:
            assert b"sk-secret-from-file" not in f.read()
        body = {"prompt": "hi", "max_tokens": 2}
        assert httpx.post(server.base_url + "/v1/completions", json=body).status_code == 401
        r = httpx.post(server.base_url + "/v1/completions", json=body, headers=auth, timeout=30)
        assert r.status_code == 200, r.text
        # /health stays open; /health_generate runs a generation, so it takes the key
        assert httpx.get(server.base_url + "/health").status_code == 200
        assert httpx.get(server.base_url + "/health_generate", timeout=30).status_code == 401
        r = httpx.get(server.base_url + "/health_generate", headers=auth, timeout=30)
        assert r.status_code == 200
