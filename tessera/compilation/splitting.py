"""Splitting ops and the FX graph split.

A splitting op is a torch.library custom op that must run eagerly between graph pieces: attention
(its batch metadata changes every step and lives in the forward context, not in graph inputs);
later NCCL all-reduce and MoE all-to-all register here the same way, by qualified name.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import fx
from torch.fx.passes.split_module import split_module

_registered: list[str] = []


def register_splitting_op(qualname: str) -> None:
    """Make `namespace::name` (any overload) a splitting op for graphs compiled from now on."""
    namespace, sep, name = qualname.partition("::")
    if not sep or not namespace or not name:
        raise ValueError(f"splitting op must be 'namespace::name', got {qualname!r}")
    if qualname not in _registered:
        _registered.append(qualname)


def splitting_ops() -> list[str]:
    """Attention's ops (`tessera.attention.op.SPLITTING_OPS`) plus the registered ones."""
    from tessera.attention.op import SPLITTING_OPS  # registers the op

    return list(dict.fromkeys([*SPLITTING_OPS, *_registered]))


def op_qualname(target: Any) -> str | None:
    """'namespace::name' of an FX call_function target that is a dispatcher op, else None.

    Dynamo records `torch.ops.ns.op(...)` as the OpOverloadPacket; AOT graphs use an OpOverload.
    """
    if isinstance(target, torch._ops.OpOverload):
        return target._schema.name
    if isinstance(target, torch._ops.OpOverloadPacket):
        return target._qualified_op_name
    return None


def python_implementation(qualname: str) -> Callable[..., Any] | None:
    """The Python function behind a `torch.library.custom_op`, when it is the op's only kernel.

    A call through the dispatcher costs a Python custom op 10-20 us (autograd and in-place
    version-counter handling, Python trampolines): per layer in a replay that is most of the
    host time left besides the kernels. Graph replays run in inference mode, where that handling
    does nothing, so the split graph calls the function directly. None (use the dispatcher) when
    the op is not a Python custom op, has device-specific kernels or a disabled kernel, or this
    torch keeps its custom ops differently.
    """
    try:
        from torch._library.custom_ops import OPDEFS
    except ImportError:
        return None
    opdef = OPDEFS.get(qualname)
    fn = getattr(opdef, "_init_fn", None)
    kernels = getattr(opdef, "_backend_fns", None)
    if fn is None or kernels is None or set(kernels) != {None}:
        return None
    if getattr(opdef, "_disabled_kernel", None) or getattr(opdef, "_torch_dispatch_fns", None):
        return None
    return fn


def python_op_call(module: fx.GraphModule) -> Callable[..., Any] | None:
    """A splitting piece (one op call, no outputs: the op writes into its `out` argument) as a
    direct call of the op's Python function with the piece's arguments; None when that does not
    apply (see `python_implementation`)."""
    calls = [n for n in module.graph.nodes if n.op == "call_function"]
    output = next(n for n in module.graph.nodes if n.op == "output")
    if len(calls) != 1 or calls[0].kwargs or output.args not in ((), ((),), (None,)):
        return None
    name = op_qualname(calls[0].target)
    fn = python_implementation(name) if name is not None else None
    if fn is None:
        return None
    placeholders = {n: i for i, n in enumerate(n for n in module.graph.nodes
                                               if n.op == "placeholder")}
    if any(isinstance(a, fx.Node) and a not in placeholders for a in calls[0].args):
        return None
    # per argument: (True, index of the piece input) or (False, constant)
    spec = [(True, placeholders[a]) if isinstance(a, fx.Node) else (False, a)
            for a in calls[0].args]

    def call_splitting_op(*args: Any) -> tuple:
        fn(*[args[v] if is_input else v for is_input, v in spec])
        return ()

    def bind(args: Sequence[Any]) -> Callable[[], Any]:
        """The call with these piece arguments as a zero-argument callable (replay plans). An op
        whose function has a `prepare(*args)` makes it (see tessera.attention.op): the
        plan calls it with the same tensors every time, so batch-independent work is done
        once."""
        resolved = [args[v] if is_input else v for is_input, v in spec]
        prepare = getattr(fn, "prepare", None)
        return prepare(*resolved) if prepare is not None else functools.partial(fn, *resolved)

    call_splitting_op.bind = bind  # type: ignore[attr-defined]
    return call_splitting_op


def bind_call(entry: Callable[..., Any], args: Sequence[Any]) -> Callable[[], Any]:
    """`entry(*args)` as a zero-argument callable: a splitting op's direct call with its
    arguments resolved once (`python_op_call`), else a partial of `entry`."""
    bind = getattr(entry, "bind", None)
    return bind(args) if bind is not None else functools.partial(entry, *args)


@dataclasses.dataclass
class Piece:
    """One submodule of the split graph, in execution order."""

    name: str             # attribute name on the split GraphModule, e.g. "submod_3"
    index: int            # position in execution order
    is_splitting: bool    # a single splitting-op call, run eagerly
    module: fx.GraphModule


def split_graph(gm: fx.GraphModule, ops: Iterable[str]) -> tuple[fx.GraphModule, list[Piece]]:
    """Split `gm` so every splitting-op call sits alone in its own submodule.

    Nodes between two splitting ops form one piece. `keep_original_order=True` matters: the
    splitting ops mutate their `out` argument, and a reordering split could move a reader of that
    buffer ahead of the op that fills it.
    """
    ops = set(ops)
    partition: dict[fx.Node, int] = {}
    current = 0
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output"):
            continue
        if node.op == "call_function" and op_qualname(node.target) in ops:
            partition[node] = current + 1
            current += 2
        else:
            partition[node] = current
    split = split_module(gm, None, lambda node: partition[node], keep_original_order=True)
    splitting_ids = {pid for node, pid in partition.items()
                     if node.op == "call_function" and op_qualname(node.target) in ops}
    pieces = []
    # submodules run in the order the split graph calls them
    for node in split.graph.nodes:
        if node.op == "call_module":
            module = getattr(split, node.target)
            pid = int(node.target.removeprefix("submod_"))
            pieces.append(Piece(node.target, len(pieces), pid in splitting_ids, module))
    return split, pieces


__all__ = ["Piece", "bind_call", "op_qualname", "python_implementation", "python_op_call",
           "register_splitting_op", "split_graph", "splitting_ops"]
