"""The capture/replay path on the CPU, through a platform whose "graphs" emulate CUDA graphs.

An emulated graph records every aten op run inside its capture context (with the very tensors it
read and wrote) and replay re-runs them on those tensors, writing results into the recorded
outputs. Like a CUDA graph it therefore reads its inputs from their capture-time memory and writes
its outputs to the same memory every time: a replay whose inputs were not copied into the captured
buffers computes on stale data, and a piece whose output moved would be read from the wrong place.
Unlike a CUDA graph it keeps every recorded tensor alive (no pool reuse), so memory-sharing
hazards stay the GPU tests' job.
"""
from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from hf_models import save_tiny_model
from pcg_helpers import MixedBatches, make_pcg_runner, pcg_and_eager_logits, pcg_of
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tessera.platforms.cpu import CpuPlatform

aten = torch.ops.aten
# allocations and metadata changes: no kernel in a CUDA graph, nothing to recompute at replay
_NOT_KERNELS = (aten.empty, aten.empty_strided, aten.empty_like, aten.set_)


class _Recorder(TorchDispatchMode):
    def __init__(self, ops: list) -> None:
        super().__init__()
        self.ops = ops

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func.overloadpacket not in _NOT_KERNELS:
            self.ops.append((func, args, kwargs, out))
        return out


class EmulatedGraph:
    def __init__(self) -> None:
        self.ops: list[tuple[Any, tuple, dict, Any]] = []
        self.replays = 0

    def replay(self) -> None:
        self.replays += 1
        for func, args, kwargs, out in self.ops:
            fresh = func(*args, **kwargs)
            for old, new in zip(tree_flatten(out)[0], tree_flatten(fresh)[0]):
                if isinstance(old, torch.Tensor) and old.data_ptr() != new.data_ptr():
                    old.copy_(new)


class EmulatedGraphPlatform(CpuPlatform):
    supports_piecewise_graph = True

    def __init__(self) -> None:
        self.captures = 0

    def graph_class(self) -> type:
        return EmulatedGraph

    def graph_pool_handle(self) -> Any:
        return ("emulated pool",)

    @contextlib.contextmanager
    def graph_context(self, graph: EmulatedGraph, pool: Any = None, stream: Any = None):
        assert pool == ("emulated pool",)
        self.captures += 1
        with _Recorder(graph.ops):
            yield


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def runner(request, tmp_path_factory):
    path = save_tiny_model(str(tmp_path_factory.mktemp(request.param)), request.param)
    platform = EmulatedGraphPlatform()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("tessera.runner.model_runner.platform_for_device", lambda device: platform)
        runner = make_pcg_runner(path, piecewise_cuda_graph_max_tokens=24)
    pcg_of(runner).state.check_addresses = True
    return runner


def test_every_size_and_piece_is_captured_once(runner):
    pcg = pcg_of(runner)
    assert pcg.use_graphs and runner.graph_pool.handle == ("emulated pool",)
    pieces = pcg.backend.graph_pieces
    assert runner.platform.captures == pcg.state.graphs_captured == (
        len(pcg.capture_sizes) * len(pieces))
    for piece in pieces:
        assert sorted(piece.graphs) == pcg.capture_sizes


def test_replayed_logits_equal_eager_for_every_size(runner):
    pcg = pcg_of(runner)
    batches = MixedBatches(runner)
    for total in range(1, pcg.max_tokens + 1):
        size = pcg.padded_size(total)
        replays = [p.graphs[size].graph.replays for p in pcg.backend.graph_pieces]
        ours, eager = pcg_and_eager_logits(runner, batches.mixed(total))
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, t=total: f"{t} tokens: {m}")
        # the forward replayed each piece's graph of the padded size once, and ran nothing else
        assert [p.graphs[size].graph.replays for p in pcg.backend.graph_pieces] == [
            r + 1 for r in replays]
        batches.free()
    # every forward ran its size's replay plan, past Dynamo and the split graph's code
    assert sum(plan.replays for plan in pcg.plans.values()) >= pcg.max_tokens
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0


def test_every_size_has_a_replay_plan_of_all_graphs_and_attention_calls(runner):
    pcg = pcg_of(runner)
    layers = runner.model_config.num_hidden_layers
    assert sorted(pcg.plans) == pcg.capture_sizes
    for size, plan in pcg.plans.items():
        assert len(plan.graph_calls) == layers + 1 and len(plan.steps) == 2 * layers + 1
        assert plan.lead == 1  # the pieces before the first attention: only the first
        assert [c for _, c, _ in plan.graph_calls] == [p.graphs[size]
                                                       for p in pcg.backend.graph_pieces]


def test_first_piece_is_launched_before_the_attention_metadata(runner, monkeypatch):
    """replay() starts the plan (the first piece's graph) before the host works out the batch's
    attention metadata: the device has work while the host does that."""
    pcg = pcg_of(runner)
    batches = MixedBatches(runner)
    batch = batches.mixed(6)
    size = pcg.padded_size(6)
    first = pcg.backend.graph_pieces[0].graphs[size].graph
    seen = []
    init = pcg.attn_backend.init_forward_metadata

    def recording(forward_batch):
        seen.append(first.replays)
        init(forward_batch)

    monkeypatch.setattr(pcg.attn_backend, "init_forward_metadata", recording)
    before = first.replays
    with torch.inference_mode():
        pcg.replay(batch)
    assert seen == [before + 1] and first.replays == before + 1
    batches.free()


def test_plan_direct_call_and_dynamo_give_the_same_logits(runner, monkeypatch):
    pcg = pcg_of(runner)
    batches = MixedBatches(runner)
    for total in (1, 6, pcg.max_tokens):
        batch = batches.mixed(total)
        with torch.inference_mode():
            plan = pcg.replay(batch).clone()
            with monkeypatch.context() as m:
                m.setattr(pcg, "plans", {})
                direct = pcg.replay(batch).clone()
                m.setattr(pcg.backend, "direct", None)
                dynamo = pcg.replay(batch).clone()
        assert torch.equal(plan, direct) and torch.equal(plan, dynamo)
        batches.free()
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0


def test_the_trunk_comes_back_in_the_captured_output_memory(runner):
    """The last piece's output is held by a weak reference: each run of a size gives the same
    memory (the runner's finish reads it at once)."""
    pcg = pcg_of(runner)
    with torch.inference_mode():
        first = pcg._run(pcg._dummy_batch(8), 8)
        second = pcg._run(pcg._dummy_batch(8), 8)
    assert first.data_ptr() == second.data_ptr()
