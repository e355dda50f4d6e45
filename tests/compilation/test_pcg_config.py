"""Piecewise graph config rules in resolve(): on where the platform has graphs, off by hand,
enforced past the auto-disable, each auto decision logged; bad values are clear errors."""
from __future__ import annotations

import logging

import pytest

from tessera.config import EngineConfig
from tessera.platforms import current_platform


def resolve(**kw) -> EngineConfig:
    return EngineConfig.from_kwargs(model_path="tiny-llama", device="cpu", **kw).resolve()


def test_off_on_a_platform_without_graphs_with_the_reason_logged(caplog):
    with caplog.at_level(logging.INFO, logger="tessera.config.engine"):
        graph = resolve().graph
    assert graph.disable_piecewise_cuda_graph
    assert "piecewise CUDA graph disabled: platform cpu has no graphs" in caplog.text


def test_on_by_default_where_the_platform_has_graphs(monkeypatch):
    monkeypatch.setattr(type(current_platform()), "supports_piecewise_graph", True)
    assert not resolve().graph.disable_piecewise_cuda_graph
    assert resolve(disable_piecewise_cuda_graph=True).graph.disable_piecewise_cuda_graph


def test_enforce_skips_the_auto_disable(caplog):
    with caplog.at_level(logging.INFO, logger="tessera.config.engine"):
        graph = resolve(enforce_piecewise_cuda_graph=True).graph
    assert not graph.disable_piecewise_cuda_graph
    assert "run without capture" in caplog.text
    # turning it off by hand wins over enforcing it
    assert resolve(enforce_piecewise_cuda_graph=True,
                   disable_piecewise_cuda_graph=True).graph.disable_piecewise_cuda_graph


def test_max_tokens_defaults_to_the_chunked_prefill_size():
    assert resolve().graph.piecewise_cuda_graph_max_tokens == 2048
    assert resolve(chunked_prefill_size=512).graph.piecewise_cuda_graph_max_tokens == 512
    assert resolve(chunked_prefill_size=-1).graph.piecewise_cuda_graph_max_tokens == 4096
    assert resolve(piecewise_cuda_graph_max_tokens=96).graph.piecewise_cuda_graph_max_tokens == 96
    with pytest.raises(ValueError, match="--piecewise-cuda-graph-max-tokens must be >= 1"):
        resolve(piecewise_cuda_graph_max_tokens=0)


def test_whole_forward_graph_request_limit():
    assert resolve().graph.piecewise_cuda_graph_max_requests == 4
    assert resolve(piecewise_cuda_graph_max_requests=0).graph.piecewise_cuda_graph_max_requests == 0
    with pytest.raises(ValueError, match="--piecewise-cuda-graph-max-requests must be >= 0"):
        resolve(piecewise_cuda_graph_max_requests=-1)


def test_no_capture_size_for_the_parallel_layout_fails_before_the_model_loads(monkeypatch):
    """The capture-size rule is compilation's (capture_sizes); the runner applies it to the
    resolved config before anything loads."""
    from tessera.runner import model_runner

    monkeypatch.setattr(model_runner, "load_model",
                        lambda *a, **k: pytest.fail("the model must not load"))
    config = resolve(enforce_piecewise_cuda_graph=True, tp_size=4, moe_dense_tp_size=1,
                     piecewise_cuda_graph_tokens=[2, 6, 10])
    with pytest.raises(ValueError, match="multiple of 4"):
        model_runner.ModelRunner(config)
    # the same sizes are fine while PCG is off
    resolve(tp_size=4, moe_dense_tp_size=1, piecewise_cuda_graph_tokens=[2, 6, 10])


def test_cpu_runner_builds_the_piecewise_runner_only_when_enforced():
    from tessera.runner.model_runner import ModelRunner
    from tessera.runner.piecewise_graph_runner import PiecewiseGraphRunner

    def kinds(**kw):
        runner = ModelRunner(EngineConfig.from_kwargs(
            model_path="tiny-llama", device="cpu", kv_cache_tokens=256, max_running_requests=2,
            piecewise_cuda_graph_max_tokens=8, **kw))
        return [type(r) for r in runner.graph_runners]

    assert PiecewiseGraphRunner not in kinds()
    assert kinds(enforce_piecewise_cuda_graph=True) == [PiecewiseGraphRunner]


def test_chunked_prefill_size_follows_the_device_memory():
    from tessera.config.engine import auto_chunked_prefill_size

    class Device:
        device_type = "cuda"

        def __init__(self, gib: float) -> None:
            self.total = int(gib * 2**30)

        def mem_get_info(self) -> tuple[int, int]:
            return self.total // 2, self.total

    assert auto_chunked_prefill_size(Device(79.2)) == (8192, "79 GiB of device memory")
    assert auto_chunked_prefill_size(Device(139))[0] == 8192
    assert auto_chunked_prefill_size(Device(40))[0] == 4096
    assert auto_chunked_prefill_size(Device(16))[0] == 2048
    assert resolve().scheduler.chunked_prefill_size == 2048  # CPU
    assert resolve(chunked_prefill_size=300).scheduler.chunked_prefill_size == 300


def test_max_running_requests_follows_the_kv_pool():
    from tessera.config.engine import (
        GraphConfig,
        SchedulerConfig,
        auto_max_running_requests,
        max_running_requests_cap,
    )

    sched, graph = SchedulerConfig(), GraphConfig()
    # a large pool: the largest decode graph batch bounds it
    n, why = auto_max_running_requests(400_000, sched, graph)
    assert n == 256 and "decode graph" in why
    assert auto_max_running_requests(400_000, sched, GraphConfig(cuda_graph_max_bs=160))[0] == 160
    assert auto_max_running_requests(400_000, sched, GraphConfig(cuda_graph_bs=[1, 2, 48]))[0] == 48
    # a small pool: one request per 256 of its tokens, at least one
    assert auto_max_running_requests(10_000, sched, graph) == (
        39, "KV pool of 10000 tokens / 256 tokens per request")
    assert auto_max_running_requests(100, sched, graph)[0] == 1
    # given: taken as is (the runner calls auto_max_running_requests only when it is not)
    assert max_running_requests_cap(SchedulerConfig(max_running_requests=7), graph) == 7
    assert max_running_requests_cap(sched, graph) == 256
    assert auto_max_running_requests(10**6, sched, GraphConfig(disable_cuda_graph=True))[0] == 256


def test_runner_settles_max_running_requests_for_the_scheduler():
    from tessera.engine.engine import Engine

    engine = Engine(EngineConfig.from_kwargs(model_path="tiny-llama", device="cpu",
                                             kv_cache_tokens=2048))
    try:
        assert engine.runner.max_running_requests == 8  # 2048 / 256
        assert engine.config.scheduler.max_running_requests == 8
        assert engine.scheduler.config.max_running_requests == 8
        assert len(engine.runner.kv_cache.req_to_token_pool.free_rows) == 8  # + the padding row
    finally:
        engine.shutdown()
    with pytest.raises(ValueError, match="max-running-requests must be >= 1"):
        resolve(max_running_requests=0)
