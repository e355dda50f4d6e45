"""Shared by the server tests: the processes a server started (read from /proc, Linux only) and
the engine's statistics as /get_server_info reports them."""
from __future__ import annotations

import os
import time

import httpx


def child_pids(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # field 4: the parent's pid
                kids.append(int(entry))
    return kids


def engine_stats(base_url: str) -> dict:
    return httpx.get(f"{base_url}/get_server_info", timeout=10).json()["engine"]


def wait_until_idle(base_url: str, seconds: float, what: str) -> dict:
    """The engine's statistics once nothing runs or waits; fails after `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        stats = engine_stats(base_url)
        if stats["num_running_reqs"] == 0 and stats["num_queued_reqs"] == 0:
            return stats
        assert time.monotonic() < deadline, f"{what}: {stats}"
        time.sleep(0.1)
