"""The direct call past Dynamo: built from what Dynamo really passes the compiled graph at run time
(not from `example_inputs`, whose form differs between torch versions), equal to the Dynamo path,
and refused (with a reason) when a graph input is not one the direct call can supply."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from tessera.compilation.backend import CompiledBackbone, PiecewiseBackend
from tessera.compilation.monitor import CompileMonitor
from tessera.compilation.piecewise import GraphCaptureState

_outside = torch.randn(16)  # a tensor that is neither an input nor a parameter/buffer


class Toy(nn.Module):
    def __init__(self, read_outside: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 16)
        self.proj = nn.Linear(16, 16)
        self.register_buffer("scale", torch.full((16,), 0.5))
        self.read_outside = read_outside

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden = self.embed(input_ids) * self.scale + positions[:, None].float()
        hidden = self.proj(hidden).reshape(input_ids.shape[0], 4, 4).sum(-1)
        if self.read_outside:
            hidden = hidden + _outside[:4]
        return hidden


def compiled(module: nn.Module) -> CompiledBackbone:
    backend = PiecewiseBackend(GraphCaptureState(None), CompileMonitor("toy"), ops=[])
    return CompiledBackbone(module, backend)


def inputs(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(n) % 50, torch.arange(n)


@torch.inference_mode()
def test_direct_call_is_rebuilt_from_the_run_time_arguments_and_equals_dynamo():
    torch.manual_seed(0)
    module = Toy()
    backbone = compiled(module)
    backend = backbone.backend
    backbone.trace(*inputs(6))
    direct = backend.direct
    assert direct is not None, backend.no_direct_reason
    assert backend.recorder.calls == []  # the trace's record is dropped once used
    # the template holds the module's own parameters and buffer, the token count goes in as an
    # int for each symbolic size Dynamo made a graph input
    statics = {id(t) for t in (*module.parameters(), *module.buffers())}
    assert {id(t) for t in direct.template if t is not None} == statics
    assert direct.ids_slots and direct.positions_slots
    for n in (2, 7, 13):
        ids, positions = inputs(n)
        # what Dynamo passes the graph now, against what the direct call would pass
        backend.recorder.armed = True
        ok, through_dynamo = backbone.monitor.call(backbone._compiled, ids, positions)
        assert ok
        ((dynamo_args, _),) = backend.recorder.calls
        backend.recorder.calls.clear()
        ours = direct.flat_args(ids, positions)
        assert len(ours) == len(dynamo_args)
        for a, b in zip(ours, dynamo_args):
            assert a is b or (type(a) is int and a == b)
        calls = backbone.direct_calls
        assert torch.equal(backbone(ids, positions), through_dynamo)
        assert backbone.direct_calls == calls + 1
        torch.testing.assert_close(through_dynamo, module(ids, positions))
    assert backbone.monitor.compiles == 1


@torch.inference_mode()
def test_a_graph_input_that_is_not_an_input_or_parameter_leaves_no_direct_call(caplog):
    backbone = compiled(Toy(read_outside=True))
    out = backbone.trace(*inputs(5))
    assert backbone.backend.direct is None
    assert "not a parameter or buffer of the backbone" in backbone.backend.no_direct_reason
    assert "no direct call" in caplog.text
    # every call goes through Dynamo, correctly
    dynamo = backbone.dynamo_calls
    ids, positions = inputs(9)
    torch.testing.assert_close(backbone(ids, positions),
                               Toy.forward(backbone._backbone, ids, positions))
    assert backbone.dynamo_calls == dynamo + 1 and out.shape == (5, 4)


@torch.inference_mode()
def test_calls_unlike_the_trace_go_through_dynamo():
    backbone = compiled(Toy())
    backbone.trace(*inputs(4))
    ids, positions = inputs(6)
    direct = backbone.backend.direct
    assert direct.accepts(ids, positions)
    assert not direct.accepts(ids.to(torch.int32), positions)     # dtype
    assert not direct.accepts(ids, positions[:5])                  # shapes differ
    assert not direct.accepts(ids[:1], positions[:1])              # below MIN_TOKENS
    assert not direct.accepts(ids[::2], positions[::2])            # strides
    with torch.inference_mode(False):
        assert not direct.accepts(ids, positions)                  # grad mode


def test_trace_needs_two_tokens():
    backbone = compiled(Toy())
    with pytest.raises(ValueError, match=">= 2 tokens"):
        backbone.trace(*inputs(1))
