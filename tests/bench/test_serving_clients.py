"""`tessera bench serving` and `tessera bench gsm8k` against a real tiny server on the CPU."""
from __future__ import annotations

import json
import os
import re

import pytest

from tessera import cli
from tessera.bench.gsm8k import SAMPLE_DATA, last_number, load_jsonl, synthetic_problems
from tessera.server.testing import ServerProcess

SERVER_ARGS = ["--kv-cache-tokens", "16384", "--max-running-requests", "256"]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory):
    profiles = tmp_path_factory.mktemp("profiles")
    with ServerProcess([*SERVER_ARGS, "--profile-dir", str(profiles)]) as s:
        yield s.base_url


def test_bench_serving_random(base_url, tmp_path, capsys):
    out = tmp_path / "serving.json"
    rc = cli.main(["bench", "serving", "--base-url", base_url, "--dataset", "random",
                   "--num-prompts", "24", "--random-input-len", "96", "--random-output-len",
                   "16", "--random-range-ratio", "1.0", "--max-concurrency", "8",
                   "--output-file", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["completed"] == 24 and r["failed"] == 0
    assert r["total_output_tokens"] == 24 * 16  # ignore_eos + max_tokens: exact
    # prompt lengths come from a words -> tokens fit against the server: close, not exact
    assert 0.8 * 24 * 96 < r["total_input_tokens"] < 1.2 * 24 * 96
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_latency_ms"):
        assert 0 < r[key]["median"] <= r[key]["p99"]
    assert r["ttft_ms"]["mean"] < r["e2e_latency_ms"]["mean"]
    assert r["request_throughput"] > 0 and r["output_throughput"] > 0
    assert "Output token throughput (tok/s)" in capsys.readouterr().out


def test_bench_serving_poisson_rate(base_url, tmp_path):
    out = tmp_path / "serving.json"
    rc = cli.main(["bench", "serving", "--host", "127.0.0.1", "--port", base_url.rsplit(":")[-1],
                   "--num-prompts", "8", "--random-input-len", "32", "--random-output-len", "8",
                   "--request-rate", "40", "--output-file", str(out)])
    r = json.loads(out.read_text())
    assert rc == 0 and r["completed"] == 8 and r["request_rate"] == 40.0


def test_bench_serving_profile(base_url, tmp_path, capsys):
    out = tmp_path / "serving.json"
    rc = cli.main(["bench", "serving", "--base-url", base_url, "--num-prompts", "16",
                   "--random-input-len", "32", "--random-output-len", "24", "--random-range-ratio",
                   "1.0", "--max-concurrency", "4", "--profile", "--profile-steps", "5",
                   "--profile-start-s", "0", "--output-file", str(out)])
    r = json.loads(out.read_text())
    assert rc == 0 and r["completed"] == 16
    trace = r["profile_trace"]
    assert trace.endswith(".trace.json.gz") and os.path.exists(trace)  # same host here
    assert trace in capsys.readouterr().out


def test_gsm8k_synthetic(base_url, tmp_path, capsys):
    out = tmp_path / "gsm8k.json"
    rc = cli.main(["bench", "gsm8k", "--base-url", base_url, "--synthetic", "--num-shots", "3",
                   "--num-questions", "12", "--parallel", "4", "--max-tokens", "16",
                   "--output-file", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["num_questions"] == 12 and r["failed"] == 0 and 0 <= r["accuracy"] <= 1
    # every prompt starts with the same 3-shot prefix: the radix cache must serve some of it
    assert r["cached_prompt_tokens"] > 0
    printed = capsys.readouterr().out
    for field in ("Accuracy:", "Invalid:", "Latency:", "Output throughput:"):
        assert field in printed


def test_gsm8k_sample_file(base_url, tmp_path):
    rc = cli.main(["bench", "gsm8k", "--base-url", base_url, "--num-shots", "2",
                   "--num-questions", "3", "--max-tokens", "8"])
    assert rc == 0


def test_answers_are_consistent():
    """The labels the accuracy is scored against: every worked step and final answer adds up."""
    problems = synthetic_problems(200, seed=3) + load_jsonl(SAMPLE_DATA)
    assert len(problems) == 230
    for p in problems:
        steps = re.findall(r"<<([^=]+)=([^>]+)>>", p.answer)
        assert steps, p.answer
        for expr, value in steps:
            assert eval(expr.replace("/", "//") if "." not in value else expr) == float(value)
        assert p.label is not None and p.label == float(p.answer.rsplit("#### ", 1)[1])


def test_last_number_extraction():
    assert last_number("3 + 4 = 7. So the answer is 1,234.\n") == 1234
    assert last_number("It is -5 degrees") == -5
    assert last_number("no digits here") is None
