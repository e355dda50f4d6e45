"""Decode CUDA graphs: batch-size lists, padding, and replay == eager.

CPU: the size/padding logic, and the whole replay path (static buffers, padding rows, shrinking
batches) with the graph capture swapped for an eager re-run of the captured function, on the
Triton backend in Triton's interpreter. GPU (`gpu`): real graphs, bf16, against eager decoding.
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging

import pytest
import torch
from runner_driver import RunnerDriver

from tessera.compilation.graphs import CapturedGraph, GraphMode, padded_size
from tessera.config import EngineConfig, GraphConfig
from tessera.forward.batch import ForwardMode
from tessera.runner.cuda_graph_runner import DecodeGraphRunner, decode_graph_batch_sizes
from tessera.runner.model_runner import ModelRunner

HAS_CUDA = torch.cuda.is_available()


# ---- batch-size lists and padding (pure logic) ----------------------------------------------------
def test_default_batch_sizes_fine_then_coarse_up_to_max() -> None:
    sizes = decode_graph_batch_sizes(GraphConfig(), max_running_requests=256)
    assert sizes[:9] == [1, 2, 4, 8, 12, 16, 24, 32, 40]
    assert sizes[-1] == 256 and sizes == sorted(set(sizes))
    assert all(b - a == 8 for a, b in itertools.pairwise(sizes[7:]))


def test_default_batch_sizes_clipped_and_end_at_the_limit() -> None:
    assert decode_graph_batch_sizes(GraphConfig(cuda_graph_max_bs=20), 256) == [
        1, 2, 4, 8, 12, 16, 20]
    # the scheduler never runs more than max_running_requests at once
    assert decode_graph_batch_sizes(GraphConfig(), max_running_requests=10) == [1, 2, 4, 8, 10]
    assert decode_graph_batch_sizes(GraphConfig(cuda_graph_max_bs=1), 256) == [1]
    big = decode_graph_batch_sizes(GraphConfig(cuda_graph_max_bs=300), 512)
    assert big[-4:] == [256, 272, 288, 300]


def test_explicit_batch_sizes_sorted_deduplicated_and_validated() -> None:
    assert decode_graph_batch_sizes(GraphConfig(cuda_graph_bs=[8, 1, 8, 3]), 256) == [1, 3, 8]
    assert decode_graph_batch_sizes(GraphConfig(cuda_graph_bs=[8, 1, 3]), 4) == [1, 3]
    with pytest.raises(ValueError, match="cuda-graph-bs"):
        decode_graph_batch_sizes(GraphConfig(cuda_graph_bs=[0, 4]), 256)
    with pytest.raises(ValueError, match="max-running-requests"):
        decode_graph_batch_sizes(GraphConfig(cuda_graph_bs=[64]), 16)
    with pytest.raises(ValueError, match="cuda-graph-max-bs"):
        decode_graph_batch_sizes(GraphConfig(cuda_graph_max_bs=0), 16)


def test_padded_size_is_the_next_captured_size() -> None:
    captured = [1, 2, 4, 8]
    assert [padded_size(b, captured) for b in range(1, 9)] == [1, 2, 4, 4, 8, 8, 8, 8]
    with pytest.raises(ValueError, match="exceeds"):
        padded_size(9, captured)


# ---- the runner on CPU ----------------------------------------------------------------------------
def make_runner(attention_backend: str, **kw) -> ModelRunner:
    args = {"model_path": "tiny-llama", "device": "cuda" if HAS_CUDA else "cpu",
            "dtype": "float32", "kv_cache_tokens": 4096, "max_running_requests": 16,
            "disable_piecewise_cuda_graph": True, **kw}
    return ModelRunner(EngineConfig.from_kwargs(attention_backend=attention_backend, **args))


def test_torch_native_backend_disables_decode_graphs_once(caplog) -> None:
    runner = make_runner("torch_native", disable_cuda_graph=True)
    with caplog.at_level(logging.INFO, logger="tessera.runner.cuda_graph_runner"):
        graphs = DecodeGraphRunner(runner.graph_runner_parts())
    assert not graphs.enabled and not graphs.graphs
    messages = [r.getMessage() for r in caplog.records if "decode CUDA graphs disabled" in
                r.getMessage()]
    assert len(messages) == 1 and "torch_native" in messages[0]
    drv = RunnerDriver(runner)
    row = drv.new_request()
    drv.step([(row, [5, 6, 7])])
    fb_rows = [(row, [8])]
    runner.graph_runners = [graphs]
    logits, _ = drv.step(fb_rows, ForwardMode.DECODE, all_logits=False)  # falls back to eager
    assert logits.shape == (1, runner.model_config.vocab_size)


class _EagerGraph:
    """Stands in for a captured graph on CPU: replay re-runs the captured function, which reads
    only the static buffers, and writes into the same output tensor (as a graph replay does)."""

    def __init__(self, forward) -> None:
        self.forward = forward
        self.out = forward()

    def replay(self) -> None:
        self.out.copy_(self.forward())


class _EagerGraphPool:
    """A GraphPool whose captures are _EagerGraphs, for the CPU (no graph memory to measure)."""

    def capture(self, mode, size, forward, **_) -> CapturedGraph:
        graph = _EagerGraph(forward)
        return CapturedGraph(mode, size, graph, graph.out)

    @contextlib.contextmanager
    def capturing(self, label, sizes, device):
        yield sorted(sizes, reverse=True), {"seconds": 0.0, "bytes": 0}


class EagerReplayGraphRunner(DecodeGraphRunner):
    replays: int = 0

    def __init__(self, runner: ModelRunner) -> None:
        super().__init__(dataclasses.replace(runner.graph_runner_parts(),
                                             graph_pool=_EagerGraphPool()))

    def replay(self, forward_batch):
        self.replays += 1
        return super().replay(forward_batch)


def _interpreted_triton_runner(**kw) -> ModelRunner:
    pytest.importorskip("triton")
    if HAS_CUDA:
        pytest.skip("interpreter test; the GPU tests cover real graphs")
    from tessera.ops.triton.interpreter import patch_for_numpy_2_4

    patch_for_numpy_2_4()  # Triton 3.6's interpreter vs numpy >= 2.4

    return make_runner("triton", disable_cuda_graph=True, **kw)


def test_replay_path_matches_eager_with_padding_and_shrinking_batches():
    graph_runner = _interpreted_triton_runner(cuda_graph_bs=[1, 2, 4, 8])
    eager_runner = _interpreted_triton_runner()
    graphs = EagerReplayGraphRunner(graph_runner)
    assert graphs.enabled and sorted(graphs.graphs) == [1, 2, 4, 8]
    graph_runner.graph_runners = [graphs]
    drivers = [RunnerDriver(graph_runner), RunnerDriver(eager_runner)]
    gen = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 512, (n,), generator=gen).tolist() for n in (3, 9, 1, 5, 12, 2, 7)]
    rows = [[d.new_request() for _ in prompts] for d in drivers]
    logits = [d.step(list(zip(r, prompts)), all_logits=False)[0] for d, r in zip(drivers, rows)]
    torch.testing.assert_close(logits[0], logits[1])
    # 7 requests (padded to 8), then 3 (padded to 4: rows 3..6 must turn back into padding)
    for active in (7, 7, 3):
        tokens = [lg.argmax(-1).tolist() for lg in logits]
        assert tokens[0] == tokens[1]
        logits = [d.step([(row, [t]) for row, t in zip(r[:active], tokens[0][:active])],
                         ForwardMode.DECODE, all_logits=False)[0]
                  for d, r in zip(drivers, rows)]
        torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=1e-5)
        pad = graphs.max_bs - active
        assert graphs.req_pool_indices[active:].tolist() == [graph_runner.padding_req_row] * pad
        assert graphs.out_cache_loc[active:].tolist() == [0] * pad
        assert graphs.seq_lens[active:].tolist() == [1] * pad
    assert graphs.replays == 3
    # padded rows wrote only into the dump slot: the padding row is still all zeros and every
    # real slot holds the same K/V as the eager run (both drivers allocated the same slots)
    assert not graph_runner.req_to_token_pool.req_to_token[graph_runner.padding_req_row].any()
    used = 4096 - graph_runner.allocator.available_size()
    for layer in range(graph_runner.model_config.num_hidden_layers):
        torch.testing.assert_close(graph_runner.kv_cache.pool.k_buffers[layer][1:used + 1],
                                   eager_runner.kv_cache.pool.k_buffers[layer][1:used + 1])
        torch.testing.assert_close(graph_runner.kv_cache.pool.v_buffers[layer][1:used + 1],
                                   eager_runner.kv_cache.pool.v_buffers[layer][1:used + 1])


def test_can_run_only_uniform_decode_up_to_the_largest_graph():
    runner = _interpreted_triton_runner(cuda_graph_bs=[1, 2])
    graphs = EagerReplayGraphRunner(runner)
    drv = RunnerDriver(runner)
    rows = [drv.new_request() for _ in range(3)]
    drv.step([(r, [1, 2]) for r in rows])
    runner.graph_runners = [graphs]
    drv.step([(r, [3]) for r in rows], ForwardMode.DECODE)      # 3 > 2: eager
    drv.step([(r, [4, 5]) for r in rows[:2]])                   # extend: eager
    drv.step([(r, [6]) for r in rows[1:]], ForwardMode.DECODE)  # 2 decoding: graph
    assert graphs.replays == 1


# ---- GPU: real graphs ----------------------------------------------------------------------------
gpu = pytest.mark.gpu


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, str]:
    from hf_models import save_tiny_model

    root = tmp_path_factory.mktemp("tiny")
    return {kind: save_tiny_model(str(root / kind), kind, dtype=torch.bfloat16)
            for kind in ("llama", "qwen3")}


def _gpu_runner(path: str, graphs: bool) -> ModelRunner:
    return make_runner("triton", model_path=path, dtype="bfloat16", max_running_requests=32,
                       cuda_graph_max_bs=32, disable_cuda_graph=not graphs)


@pytest.fixture(scope="module")
def gpu_runners(tiny_models):
    """(graph runner, eager runner) per model kind, shared by the GPU tests of this module."""
    return {kind: (_gpu_runner(path, True), _gpu_runner(path, False))
            for kind, path in tiny_models.items()}


def _release(runner: ModelRunner, rows: list[int]) -> None:
    for row in rows:
        runner.req_to_token_pool.free(row)
    runner.allocator.clear()


@gpu
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
@pytest.mark.parametrize("bs", [1, 3, 7, 32])
def test_gpu_graph_decode_equals_eager(gpu_runners, kind, bs, monkeypatch) -> None:
    """16 greedy steps, each runner on its own tokens: identical tokens, logits within bf16
    tolerance, every step through a graph replay (padded for 3 and 7)."""
    graph_runner, eager_runner = gpu_runners[kind]
    graphs = graph_runner.graph_runners[0]
    assert isinstance(graphs, DecodeGraphRunner) and graphs.enabled, graphs.disabled_reason
    assert graph_runner.graph_pool.captured[GraphMode.DECODE] == len(graphs.graphs)
    calls = []
    monkeypatch.setattr(graphs, "replay", lambda fb: calls.append(fb.batch_size)
                        or DecodeGraphRunner.replay(graphs, fb))
    drivers = [RunnerDriver(graph_runner), RunnerDriver(eager_runner)]
    gen = torch.Generator().manual_seed(bs)
    prompts = [torch.randint(3, 300, (int(n),), generator=gen).tolist()
               for n in torch.randint(1, 60, (bs,), generator=gen)]
    rows = [[d.new_request() for _ in prompts] for d in drivers]
    try:
        logits = [d.step(list(zip(r, prompts)), all_logits=False)[0]
                  for d, r in zip(drivers, rows)]
        for step in range(16):
            tokens = [lg.argmax(-1).tolist() for lg in logits]
            top2 = logits[1].topk(2, dim=-1).values
            assert tokens[0] == tokens[1], (
                f"step {step}: graph {tokens[0]} vs eager {tokens[1]}; eager top-2 gaps "
                f"{(top2[:, 0] - top2[:, 1]).tolist()}")
            logits = [d.step([(row, [t]) for row, t in zip(r, tk)], ForwardMode.DECODE,
                             all_logits=False)[0] for d, r, tk in zip(drivers, rows, tokens)]
            torch.testing.assert_close(logits[0], logits[1], atol=6e-2, rtol=0)
        assert calls == [bs] * 16
        assert not graph_runner.req_to_token_pool.req_to_token[
            graph_runner.padding_req_row].any()
    finally:
        for d, r in zip(drivers, rows):
            _release(d.runner, r)


@gpu
def test_gpu_capture_covers_every_size_in_one_pool(gpu_runners) -> None:
    graph_runner, eager_runner = gpu_runners["llama"]
    graphs = graph_runner.graph_runners[0]
    assert sorted(graphs.graphs) == [1, 2, 4, 8, 12, 16, 24, 32]
    assert all(graphs.graphs[bs].output.shape[0] == bs for bs in graphs.batch_sizes)
    assert not any(isinstance(r, DecodeGraphRunner) for r in eager_runner.graph_runners)


@gpu
def test_gpu_torch_native_runs_decode_eagerly(tiny_models) -> None:
    runner = make_runner("torch_native", model_path=tiny_models["llama"], dtype="bfloat16")
    graphs = runner.graph_runners[0]
    assert isinstance(graphs, DecodeGraphRunner) and not graphs.enabled and not graphs.graphs
    drv = RunnerDriver(runner)
    row = drv.new_request()
    drv.step([(row, [5, 6, 7])])
    logits, _ = drv.step([(row, [8])], ForwardMode.DECODE, all_logits=False)
    assert torch.isfinite(logits).all()


@gpu
def test_gpu_decode_and_piecewise_graphs_share_one_pool(tiny_models, monkeypatch) -> None:
    """Both graph runners in one engine: one memory pool, prefill through the piecewise graph
    runner (its whole-forward graph: four requests), decode through the decode graphs, and the
    same greedy tokens as eager."""
    path = tiny_models["qwen3"]
    both = make_runner("triton", model_path=path, dtype="bfloat16", max_running_requests=8,
                       cuda_graph_max_bs=8, disable_piecewise_cuda_graph=False,
                       piecewise_cuda_graph_max_tokens=64)
    eager = _gpu_runner(path, graphs=False)
    decode_graphs, piecewise = both.graph_runners
    assert isinstance(decode_graphs, DecodeGraphRunner) and decode_graphs.enabled
    assert decode_graphs.parts.graph_pool is both.graph_pool is piecewise.state.graph_pool
    calls = []
    monkeypatch.setattr(decode_graphs, "replay", lambda fb: calls.append(fb.batch_size)
                        or DecodeGraphRunner.replay(decode_graphs, fb))
    drivers = [RunnerDriver(both), RunnerDriver(eager)]
    gen = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (n,), generator=gen).tolist() for n in (5, 17, 9, 30)]
    rows = [[d.new_request() for _ in prompts] for d in drivers]
    logits = [d.step(list(zip(r, prompts)), all_logits=False)[0] for d, r in zip(drivers, rows)]
    assert (piecewise.full_replays, piecewise.replays) == (1, 0)
    for _ in range(8):
        tokens = [lg.argmax(-1).tolist() for lg in logits]
        assert tokens[0] == tokens[1]
        logits = [d.step([(row, [t]) for row, t in zip(r, tk)], ForwardMode.DECODE,
                         all_logits=False)[0] for d, r, tk in zip(drivers, rows, tokens)]
        torch.testing.assert_close(logits[0], logits[1], atol=6e-2, rtol=0)
    assert calls == [4] * 8
