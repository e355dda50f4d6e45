"""POST /start_profile and /stop_profile: a torch-profiler trace of the engine's steps, written
where the server was told (--profile-dir), never where a request says."""
from __future__ import annotations

import gzip
import importlib.util
import json
import os

import httpx
import pytest

from tessera.server.testing import ServerProcess


def _load_trace_summary():
    path = os.path.join(os.path.dirname(__file__), "..", "..", "scripts", "gpu",
                        "trace_summary.py")
    spec = importlib.util.spec_from_file_location("trace_summary", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


trace_summary = _load_trace_summary()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    out = tmp_path_factory.mktemp("profiles")
    with ServerProcess(["--kv-cache-tokens", "4096", "--profile-dir", str(out)]) as s:
        s.profile_dir = str(out)
        yield s


def post(server, path, status=200, **kw):
    r = httpx.post(f"{server.base_url}{path}", timeout=60, **kw)
    assert r.status_code == status, r.text
    return r.json()


def generate(server, tokens: int) -> None:
    post(server, "/generate", json={"text": "profile me", "sampling_params": {
        "max_new_tokens": tokens, "temperature": 0, "ignore_eos": True}})


def trace_events(path: str) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return json.load(f)["traceEvents"]


def test_profile_of_n_steps_stops_by_itself(server):
    post(server, "/stop_profile", status=400)  # nothing running yet
    assert post(server, "/start_profile", json={"num_steps": 3})["success"]
    post(server, "/start_profile", status=400, json={})  # one at a time
    generate(server, 8)
    answer = post(server, "/stop_profile")  # already stopped after 3 steps: its trace
    path = answer["trace"]
    assert os.path.dirname(path) == server.profile_dir and path.endswith(".trace.json.gz")
    steps = [e for e in trace_events(path) if e.get("name") == "engine_step"]
    assert len(steps) == 3


def test_steps_hold_named_part_ranges_the_summary_reads(server):
    assert post(server, "/start_profile", json={"num_steps": 4})["success"]
    generate(server, 8)
    path = post(server, "/stop_profile")["trace"]
    names = {e.get("name", "") for e in trace_events(path)}
    assert {"schedule", "sample", "process"} <= names
    assert any(n.startswith("forward extend reqs=1 tokens=") for n in names) or any(
        n.startswith("forward decode reqs=1 tokens=1") for n in names)
    summary = trace_summary.summarize(trace_summary.load(path), top=5)
    assert "engine_step" in summary and "schedule" in summary


def test_profile_until_stopped(server):
    post(server, "/start_profile")  # no body: until /stop_profile
    generate(server, 4)
    path = post(server, "/stop_profile")["trace"]
    assert len([e for e in trace_events(path) if e.get("name") == "engine_step"]) >= 4


@pytest.mark.parametrize("body", [{"num_steps": 0}, {"num_steps": "5"}, {"num_steps": 2.5},
                                  {"output_dir": "/etc"}, [1]])
def test_bad_bodies_are_refused(server, body):
    error = post(server, "/start_profile", status=400, json=body)["error"]
    assert error["type"] == "invalid_request_error" or error["code"]


def test_plain_text_is_refused(server):
    r = httpx.post(f"{server.base_url}/start_profile", content=b"{}",
                   headers={"content-type": "text/plain"}, timeout=30)
    assert r.status_code == 415
