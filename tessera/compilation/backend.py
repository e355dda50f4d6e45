"""The piecewise torch.compile backend and the compiled backbone.

`CompiledBackbone` compiles `backbone(input_ids, positions)` once with `torch.compile(fullgraph=
True, backend=PiecewiseBackend(...))`, the token dimension marked dynamic. Dynamo hands the backend
one FX graph for every token count; the backend

1. splits it at the splitting ops (attention; later all-reduce, MoE all-to-all), each of which
   stays a one-op submodule that runs eagerly;
2. compiles every other piece for the symbolic token count (`eager`: the FX code as is;
   `inductor`: compile_fx on the piece with its fake example inputs);
3. wraps each compiled piece in `PieceGraphs`, which captures and replays one graph per size;
4. returns the split graph module's code. After the trace, forwards call it directly
   (`dispatch.DirectCall`: no guards, no argument gathering); through Dynamo only when a call
   does not look like the trace's. Once every size is captured, the runner goes further and runs
   a per-size `ReplayPlan` (`build_replay_plan`): the graph replays and splitting-op calls of one
   forward as a flat list, without the split graph's code.

Token counts 0 and 1: Dynamo specialises a dynamic size that is 0 or 1 when traced, and a trace
at >= 2 tokens guards on `size >= 2` (and may add guards such as `size != 1` where a view of a
non-contiguous tensor treats size-1 dims specially). So the backbone is traced once at >= 2
tokens, every count >= 2 shares that graph, and the runner pads a one-token batch to 2
(`capture_sizes.MIN_TOKENS`), which costs nothing measurable. This needs no private Dynamo settings
(`backed_size_oblivious`, unbacked sizes), only Dynamo's long-standing 0/1 rule. (Tracing under
`backed_size_oblivious` was tried: torch 2.13 still guards `size != 1` on a reshape of a strided
q/k view, so a one-token batch recompiled.)
"""
from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx, nn

from tessera.compilation.capture_sizes import MIN_TOKENS
from tessera.compilation.dispatch import (
    DirectCall,
    FlatCallRecorder,
    build_direct_call,
    static_tensors,
)
from tessera.compilation.monitor import CompileMonitor
from tessera.compilation.piecewise import GraphCaptureState, PieceGraphs, ReplayPlan, TokenCount
from tessera.compilation.splitting import (
    Piece,
    bind_call,
    op_qualname,
    python_op_call,
    split_graph,
    splitting_ops,
)

logger = logging.getLogger(__name__)

COMPILERS = ("eager", "inductor")


class PiecewiseBackend:
    """torch.compile backend: split at the splitting ops, compile pieces, wrap them for graphs."""

    def __init__(self, state: GraphCaptureState, monitor: CompileMonitor,
                 compiler: str = "eager", ops: Sequence[str] | None = None) -> None:
        if compiler not in COMPILERS:
            raise ValueError(f"unknown piecewise compiler {compiler!r}; choose one of {COMPILERS}")
        self.state, self.monitor, self.compiler = state, monitor, compiler
        self.ops = list(ops) if ops is not None else splitting_ops()
        self.split_module: fx.GraphModule | None = None
        self.pieces: list[Piece] = []
        self.graph_pieces: list[PieceGraphs] = []
        self.dynamo_graph: fx.GraphModule | None = None  # the graph Dynamo handed us
        self.recorder: FlatCallRecorder | None = None    # what Dynamo calls: the split graph
        # set by CompiledBackbone.trace: the guard-free way to call the first compiled graph, or
        # why there is none
        self.direct: DirectCall | None = None
        self.no_direct_reason = ""

    def __call__(self, gm: fx.GraphModule, example_inputs: Sequence[Any]) -> Callable[..., Any]:
        self.monitor.on_compile()
        start = time.perf_counter()
        token = _token_symbol(gm)
        split, pieces = split_graph(gm, self.ops)
        wrappers = []
        for piece in pieces:
            if piece.is_splitting:
                # runs eagerly between the graphs; skip the dispatcher where that is safe
                op_call = python_op_call(piece.module)
                split.__dict__[piece.name] = op_call or _generated_forward(piece.module)
                continue
            wrapper = PieceGraphs(piece.name, piece.index, self._compile_piece(piece),
                                  _token_count_getter(piece.module, token), self.state,
                                  is_last=piece is pieces[-1])
            # instance attributes shadow the submodule, so the split graph's code calls the wrapper
            split.__dict__[piece.name] = wrapper
            wrappers.append(wrapper)
        first = self.recorder is None
        graph = _generated_forward(split)
        if first:  # a later graph (a recompile the monitor lets through) keeps the first's
            self.split_module, self.pieces, self.graph_pieces = split, pieces, wrappers
            self.dynamo_graph = gm
            self.recorder = FlatCallRecorder(graph)
        logger.info("piecewise backend: %d graph pieces around %d splitting ops (%s), compiled "
                    "with %s in %.1f s", len(wrappers), len(pieces) - len(wrappers),
                    ", ".join(sorted({_splitting_op_name(p) for p in pieces if p.is_splitting})),
                    self.compiler, time.perf_counter() - start)
        return self.recorder if first else graph

    def build_direct(self, hidden: torch.Tensor, input_ids: torch.Tensor,
                     positions: torch.Tensor, statics: list[torch.Tensor]) -> None:
        """After the trace call (recorded by `self.recorder`): the DirectCall for later calls."""
        recorder = self.recorder
        if recorder is None or len(recorder.calls) != 1 or self.dynamo_graph is None:
            self.no_direct_reason = "the trace did not call the compiled graph exactly once"
        else:
            (flat_args, outputs), = recorder.calls
            result = build_direct_call(self.dynamo_graph, recorder.graph, flat_args, outputs,
                                       hidden, input_ids, positions, statics)
            self.direct, self.no_direct_reason = result.direct, result.reason
        if recorder is not None:
            recorder.calls.clear()
        if self.direct is None:
            logger.warning("piecewise backend: no direct call (%s); every forward goes through "
                           "Dynamo's guards (correct, ~0.1 ms slower)", self.no_direct_reason)

    def build_replay_plan(self, size: int, forward: Callable[[], Any]) -> ReplayPlan | None:
        """Record one forward of `size` tokens (`forward()` runs it; every piece must have a
        graph for `size`) as a ReplayPlan; None when some piece did not replay a graph."""
        split = self.split_module
        if split is None:
            return None
        recorded: list[tuple[Piece, Any, tuple]] = []
        entries = {piece.name: split.__dict__[piece.name] for piece in self.pieces}

        def recording(piece: Piece, entry: Callable[..., Any]) -> Callable[..., Any]:
            def call(*args: Any) -> Any:
                recorded.append((piece, entry, args))
                return entry(*args)
            return call

        for piece in self.pieces:
            split.__dict__[piece.name] = recording(piece, entries[piece.name])
        try:
            output = forward()
        finally:
            split.__dict__.update(entries)
        if [piece for piece, _, _ in recorded] != self.pieces:
            return None
        steps: list[Callable[[], Any]] = []
        graph_calls = []
        lead = next((i for i, (piece, _, _) in enumerate(recorded) if piece.is_splitting),
                    len(recorded))
        for piece, entry, args in recorded:
            if not piece.is_splitting:
                captured = (entry.graphs.get(entry.token_count(args))
                            if entry.token_count is not None else None)
                if captured is None:
                    return None
                steps.append(captured.graph.replay)
                graph_calls.append((entry, captured, args))
            else:
                steps.append(bind_call(entry, args))
        return ReplayPlan(size, steps, output, graph_calls, self.state, lead)

    def _compile_piece(self, piece: Piece) -> Callable[..., Any]:
        if self.compiler == "eager":
            return _generated_forward(piece.module)
        from torch._inductor.compile_fx import compile_fx

        example = [_example_value(node) for node in piece.module.graph.nodes
                   if node.op == "placeholder"]
        # the graphs are ours to capture: inductor must not add its own cudagraphs around pieces
        return compile_fx(piece.module, example, config_patches={"triton.cudagraphs": False})


class CompiledBackbone:
    """`backbone(input_ids, positions) -> hidden`, traced once for every token count; with
    `entry`, the backbone's method of that name instead of its forward (the runner compiles
    LlamaModel.trunk)."""

    _ids = itertools.count()

    def __init__(self, backbone: nn.Module, backend: PiecewiseBackend,
                 entry: str = "forward") -> None:
        self.backend = backend
        self.monitor = backend.monitor
        self.direct_calls = 0  # forwards that bypassed Dynamo (see tessera.compilation.dispatch)
        self.dynamo_calls = 0  # forwards through Dynamo's guards
        forward = _private_forward(backbone if entry == "forward" else getattr(backbone, entry),
                                   f"tessera_piecewise_forward_{next(self._ids)}")
        self._compiled = torch.compile(forward, fullgraph=True, dynamic=False, backend=backend)
        self._backbone = backbone

    @property
    def traced(self) -> bool:
        return self.monitor.compiles > 0

    def trace(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The first call: compiles, then runs. Needs >= MIN_TOKENS (see the module docstring)."""
        if self.traced:
            raise RuntimeError("the backbone is already traced")
        if input_ids.shape[0] < MIN_TOKENS:
            raise ValueError(f"trace the backbone with >= {MIN_TOKENS} tokens: Dynamo "
                             f"specialises sizes 0 and 1")
        torch._dynamo.mark_dynamic(input_ids, 0)
        torch._dynamo.mark_dynamic(positions, 0)
        hidden = self._compiled(input_ids, positions)
        # the backend compiled inside that call and recorded how Dynamo then called the graph
        self.backend.build_direct(hidden, input_ids, positions, static_tensors([self._backbone]))
        return hidden

    def __call__(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor | None:
        """Hidden states, or None when Dynamo would have had to recompile (logged by the
        monitor; the caller runs the batch eagerly)."""
        if not self.traced:
            return self.trace(input_ids, positions)
        direct = self.backend.direct
        if direct is not None and direct.accepts(input_ids, positions):
            self.direct_calls += 1
            return direct(input_ids, positions)
        self.dynamo_calls += 1
        ok, hidden = self.monitor.call(self._compiled, input_ids, positions)
        return hidden if ok else None


def _private_forward(backbone: Callable[..., torch.Tensor],
                     name: str) -> Callable[..., torch.Tensor]:
    def forward(input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return backbone(input_ids, positions)

    # Dynamo keeps compiled code and its recompile count per code object. A private copy per
    # backbone keeps runners in one process (tests build many) from counting against one another
    # and from evaluating one another's guards on every call.
    forward.__code__ = forward.__code__.replace(co_name=name)
    forward.__name__ = forward.__qualname__ = name
    return forward


def _generated_forward(gm: fx.GraphModule) -> Callable[..., Any]:
    """`gm`'s generated code, called without nn.Module.__call__ (there are no hooks to run; it saves
    microseconds per piece and layer). Dynamo builds lazily generated modules whose `forward` is a
    stub re-entering __call__ on every call: generate the code first."""
    if hasattr(type(gm), "real_recompile"):
        gm.real_recompile()
    return gm.forward


def _example_value(node: fx.Node) -> Any:
    meta = node.meta
    return meta["example_value"] if "example_value" in meta else meta.get("val")


def _sym_expr(value: Any) -> Any:
    return value.node.expr if isinstance(value, torch.SymInt) else None


def _token_symbol(gm: fx.GraphModule) -> Any:
    """The symbolic token count: the first dynamic dim among the graph's tensor inputs (input_ids
    and positions share it; parameters are static)."""
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        value = _example_value(node)
        if isinstance(value, torch.Tensor):
            for size in value.shape:
                if isinstance(size, torch.SymInt):
                    return size.node.expr
    raise RuntimeError("no dynamic dimension among the compiled graph's inputs: mark the token "
                       "dimension dynamic before the first call")


def _token_count_getter(module: fx.GraphModule, token: Any) -> TokenCount | None:
    """How to read the token count from a piece's runtime args: an int argument that is the token
    symbol, else a tensor dim that is. None when the piece does not depend on it."""
    placeholders = [n for n in module.graph.nodes if n.op == "placeholder"]
    for i, node in enumerate(placeholders):
        if _sym_expr(_example_value(node)) == token:
            return lambda args, i=i: int(args[i])
    for i, node in enumerate(placeholders):
        value = _example_value(node)
        if isinstance(value, torch.Tensor):
            for dim, size in enumerate(value.shape):
                if _sym_expr(size) == token:
                    return lambda args, i=i, dim=dim: args[i].shape[dim]
    return None


def _splitting_op_name(piece: Piece) -> str:
    for node in piece.module.graph.nodes:
        name = op_qualname(node.target) if node.op == "call_function" else None
        if name is not None:
            return name
    return "?"


__all__ = ["COMPILERS", "CompiledBackbone", "PiecewiseBackend"]
