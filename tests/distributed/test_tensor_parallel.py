"""Tensor parallelism on CPU (gloo): TP=2 and TP=4 engines equal TP=1, and the errors a user can
cause are clear. Each TP engine runs in a fresh process (tests/tp_driver.py) whose rank 0 starts
the other ranks, as `LLM(tp_size=...)` and `tessera serve --tp` do."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from hf_models import save_tiny_model

from tessera import LLM

DRIVER = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tp_driver.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_driver(*args: str, timeout: float = 240) -> str:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, DRIVER, *args], capture_output=True, text=True, check=False,
                          timeout=timeout, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tp-models")
    return {kind: save_tiny_model(str(root / kind), kind) for kind in ("llama", "qwen3")}


@pytest.mark.parametrize("kind,tp", [("llama", 2), ("llama", 4), ("qwen3", 2)])
def test_tp_logits_equal_tp1(models, tmp_path, kind, tp):
    """Safetensors shards: 4 query heads and 2 KV heads, so TP=4 replicates each KV head on two
    ranks; vocab 300 is padded on the last shard at TP=4 (75 rows each: none) and TP=2."""
    ref_path, tp_path = str(tmp_path / "tp1.pt"), str(tmp_path / "tpn.pt")
    run_driver("logits", models[kind], "1", ref_path)
    run_driver("logits", models[kind], str(tp), tp_path)
    ref, got = torch.load(ref_path), torch.load(tp_path)
    for step in ("extend", "decode", "extend2"):
        assert ref[step].shape == got[step].shape
        torch.testing.assert_close(got[step], ref[step], rtol=1e-4, atol=1e-4, msg=step)


def test_tp_dummy_weights_are_the_tp1_model_sharded(tmp_path):
    """tiny-qwen3 preset with dummy weights: TP=2 holds the TP=1 model's shards exactly."""
    ref_path, tp_path = str(tmp_path / "tp1.pt"), str(tmp_path / "tp2.pt")
    run_driver("logits", "tiny-qwen3", "1", ref_path)
    run_driver("logits", "tiny-qwen3", "2", tp_path)
    ref, got = torch.load(ref_path), torch.load(tp_path)
    torch.testing.assert_close(got["extend"], ref["extend"], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got["decode"], ref["decode"], rtol=1e-4, atol=1e-4)


def test_greedy_outputs_equal_with_chunked_prefill_and_radix_cache(models):
    args = json.dumps({"kv_cache_tokens": 1024, "max_running_requests": 4,
                       "chunked_prefill_size": 16, "disable_piecewise_cuda_graph": True})
    ref = json.loads(run_driver("generate", models["llama"], "1", args))
    got = json.loads(run_driver("generate", models["llama"], "2", args))
    assert got["tokens"] == ref["tokens"]
    assert all(len(t) == 12 for t in got["tokens"])
    assert got["cached"] == ref["cached"] and max(got["cached"]) > 16  # prefixes were reused


def test_greedy_outputs_equal_through_retraction(models):
    """A KV pool too small for the batch's outputs: requests are retracted and re-admitted (their
    slots freed and re-allocated on rank 0, written on every rank through the plan), and TP=2
    still produces TP=1's tokens."""
    args = json.dumps({"kv_cache_tokens": 96, "max_running_requests": 4,
                       "chunked_prefill_size": 16, "disable_piecewise_cuda_graph": True,
                       "disable_radix_cache": True,
                       # admission reserving nothing for outputs overcommits the pool
                       "init_new_token_ratio": 0.0, "min_new_token_ratio": 0.0})
    ref = json.loads(run_driver("generate", models["llama"], "1", args))
    got = json.loads(run_driver("generate", models["llama"], "2", args))
    assert ref["retractions"] > 0, "the pool was meant to force a retraction"
    assert got["tokens"] == ref["tokens"] and got["retractions"] == ref["retractions"]


def test_piecewise_graph_enforced_with_tp2_equals_eager(models):
    """The compiled pieces hold the TP communication ops (custom ops with fake kernels)."""
    base = {"kv_cache_tokens": 1024, "max_running_requests": 4, "chunked_prefill_size": 16}
    eager = json.loads(run_driver("generate", models["qwen3"], "2", json.dumps(
        {**base, "disable_piecewise_cuda_graph": True})))
    pcg = json.loads(run_driver("generate", models["qwen3"], "2", json.dumps(
        {**base, "enforce_piecewise_cuda_graph": True,
         "piecewise_cuda_graph_tokens": [8, 16, 32]})))
    assert pcg["graph_runners"] == ["PiecewiseGraphRunner"] and eager["graph_runners"] == []
    assert pcg["tokens"] == eager["tokens"]


def test_a_dead_rank_fails_the_next_generate_clearly_and_stops_every_rank():
    got = json.loads(run_driver("kill", "tiny-llama", "4", timeout=180))
    assert got["error"] is not None and "tensor-parallel step failed" in got["error"]
    assert "rank 1" in got["error"] and "exited" in got["error"]
    assert got["alive"] == [False, False, False] and got["stopped"]


def test_tp_not_dividing_the_heads_is_a_clear_error_before_any_rank_starts():
    with pytest.raises(ValueError, match="--tp-size 3 does not divide the model's 4 attention"):
        LLM("tiny-llama", tp_size=3, kv_cache_tokens=256)


def test_model_runner_outside_a_tp_world_is_a_clear_error():
    from tessera.config.engine import EngineConfig
    from tessera.runner.model_runner import ModelRunner

    config = EngineConfig.from_kwargs(model_path="tiny-llama", tp_size=2, kv_cache_tokens=256)
    with pytest.raises(RuntimeError, match="tensor-parallel group of 1"):
        ModelRunner(config)


@pytest.mark.parametrize("kwargs,match", [
    ({"tp_size": 4, "nnodes": 3}, "must be >= 1 and divide --tp-size"),
    ({"tp_size": 2, "nnodes": 2}, "needs --dist-init-addr"),
    ({"tp_size": 2, "node_rank": 1}, "--node-rank 1 must be in 0..0"),
    ({"tp_size": 2, "dist_init_addr": "localhost"}, "expected host:port"),
])
def test_bad_parallel_flags(kwargs, match):
    from tessera.config.engine import EngineConfig

    with pytest.raises(ValueError, match=match):
        EngineConfig.from_kwargs(model_path="tiny-llama", **kwargs).resolve()
