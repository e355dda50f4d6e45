"""If the engine process dies (OOM killer, a crash), in-flight streams end with an error event
instead of hanging, and the server exits with status 1 so a supervisor can restart it."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest
from server_procs import child_pids

from tessera.server.testing import ServerProcess, free_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def test_killed_engine_ends_streams_with_an_error_and_stops_the_server():
    server = ServerProcess(["--kv-cache-tokens", "8192"]).start()
    try:
        lines: list[str] = []

        def stream() -> None:
            with httpx.stream("POST", server.base_url + "/v1/completions", timeout=60, json={
                    "prompt": "hi", "max_tokens": 3000, "ignore_eos": True, "stream": True}) as r:
                lines.extend(r.iter_lines())

        reader = threading.Thread(target=stream)
        reader.start()
        time.sleep(1.0)  # the request is running
        engines = child_pids(server.proc.pid)
        assert engines, "the server should have an engine child process"
        for pid in engines:
            os.kill(pid, signal.SIGKILL)
        reader.join(30)
        assert not reader.is_alive(), "the stream hung after the engine died"
        events = [line for line in lines if line.startswith("data: ")]
        assert events[-1] == "data: [DONE]"
        assert "the engine stopped" in events[-2] and '"error"' in events[-2]
        assert server.proc.wait(30) == 1
    finally:
        server.stop()


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"  # a zombie has exited
    except OSError:
        return True


def test_a_server_killed_while_the_model_loads_leaves_no_process_behind():
    """SIGKILL gives the server no chance to stop its engine and tokenizer workers: each must
    notice by itself (the engine only once its model is loaded) and exit."""
    cmd = [sys.executable, "-m", "tessera.launch_server", "--host", "127.0.0.1", "--port",
           str(free_port())]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(child_pids(server.pid)) < 3:  # the engine and the tokenizer workers
            assert server.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        children = child_pids(server.pid)
    finally:
        server.kill()
        server.wait()
    deadline = time.monotonic() + 60
    while not all(_gone(pid) for pid in children):
        assert time.monotonic() < deadline, [pid for pid in children if not _gone(pid)]
        time.sleep(0.2)
