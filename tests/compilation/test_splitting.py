"""The FX split at splitting ops, including ops registered later (all-reduce, MoE all-to-all)."""
from __future__ import annotations

import pytest
import torch
from torch import fx

from tessera.attention import op  # noqa: F401  (importing it registers tessera::attention)
from tessera.compilation import splitting
from tessera.forward import context


@torch.library.custom_op("tessera_test::all_reduce", mutates_args=("x",))
def fake_all_reduce(x: torch.Tensor) -> None:
    x.mul_(2)


@fake_all_reduce.register_fake
def _(x: torch.Tensor) -> None:
    return None


def layer(x: torch.Tensor) -> torch.Tensor:
    q = x * 3
    out = torch.empty_like(q)
    torch.ops.tessera.attention(q, q, q, out, 0, 1.0)
    torch.ops.tessera_test.all_reduce(out)  # right after attention: no empty piece between
    return out + 1


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr(splitting, "_registered", [])


def kinds(pieces: list[splitting.Piece]) -> list[str]:
    out = []
    for p in pieces:
        ops = [splitting.op_qualname(n.target) for n in p.module.graph.nodes
               if n.op == "call_function"]
        out.append(ops[0] if p.is_splitting else "graph")
    return out


def test_registered_ops_split_like_attention(registry):
    gm = fx.symbolic_trace(layer)
    _, pieces = splitting.split_graph(gm, splitting.splitting_ops())
    assert kinds(pieces) == ["graph", "tessera::attention", "graph"]
    splitting.register_splitting_op("tessera_test::all_reduce")
    splitting.register_splitting_op("tessera_test::all_reduce")  # idempotent
    assert splitting.splitting_ops() == ["tessera::attention", "tessera_test::all_reduce"]
    split, pieces = splitting.split_graph(gm, splitting.splitting_ops())
    assert kinds(pieces) == ["graph", "tessera::attention", "tessera_test::all_reduce", "graph"]
    assert [p.index for p in pieces] == [0, 1, 2, 3]
    # the split keeps the original order: attention fills `out` before the all-reduce doubles it
    x = torch.randn(4, 2, 8)

    class Ctx:
        def forward(self, q, k, v, out, layer_id, scaling, batch):
            out.copy_(q)

    with context.set_forward_context(None, Ctx()):
        torch.testing.assert_close(split(x), layer(x))
        torch.testing.assert_close(split(x), x * 3 * 2 + 1)


@torch.library.custom_op("tessera_test::cuda_kernel", mutates_args=("x",), device_types="cuda")
def op_with_a_device_kernel(x: torch.Tensor) -> None:
    x.add_(1)


def test_splitting_ops_run_their_python_function_when_that_is_all_they_have(registry):
    splitting.register_splitting_op("tessera_test::all_reduce")
    _, pieces = splitting.split_graph(fx.symbolic_trace(layer), splitting.splitting_ops())
    for piece in pieces[1:3]:  # attention, all-reduce: default kernel only
        call = splitting.python_op_call(piece.module)
        assert call is not None and call.__name__ == "call_splitting_op"
    x = torch.ones(3)
    assert splitting.python_op_call(pieces[2].module)(x) == () and x.tolist() == [2.0] * 3
    # device-specific kernels, non-custom ops: through the dispatcher
    assert splitting.python_implementation("tessera_test::cuda_kernel") is None
    assert splitting.python_implementation("aten::add") is None
    assert splitting.python_op_call(pieces[0].module) is None  # not a single op call


def test_splitting_op_names_are_checked(registry):
    for bad in ("all_reduce", "::all_reduce", "ns::"):
        with pytest.raises(ValueError, match="namespace::name"):
            splitting.register_splitting_op(bad)
