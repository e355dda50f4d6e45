"""Per-size graphs of one compiled piece, and the capture state all pieces share.

Each non-splitting piece of the split backbone is wrapped in a `PieceGraphs`. Called with a token
count it has a graph for, it replays that graph and returns the outputs recorded at capture;
while the shared `GraphCaptureState` says "capturing" it records a graph for a new count; otherwise
(warm-up, sizes never captured, platforms without graphs) it runs the piece's general compiled
code.

Why replay is correct: a graph replays fixed addresses, so every input must sit where it sat at
capture. The inputs of a piece are (a) slices of the runner's static input buffers, (b) parameters
and buffers, (c) the token count as an int, and (d) outputs of earlier pieces, possibly written in
place by attention between them. (d) are exactly the tensors the earlier pieces' replays return,
which live in the shared graph memory pool at their capture-time addresses. `check_addresses`
verifies this on every replay (tests turn it on).

Memory: all graphs of all sizes use one pool (tessera.compilation.graphs.GraphPool, shared with
the decode and whole-forward graphs), captured from the largest size down. Intermediate
outputs are freed back to the pool when a capture forward returns, and the last piece's output is
freed at once (only a weak reference is kept), so each smaller capture reuses the larger one's
memory. That is safe because the graphs replay one forward at a time on one stream, and the
caller consumes a forward's output before the next forward runs.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import torch

from tessera.compilation.graphs import CapturedGraph, GraphMode, GraphPool
from tessera.compilation.weak_ref import weak_ref_tensors

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GraphCaptureState:
    """Shared by every piece of one compiled backbone; the runner flips `capturing`."""

    graph_pool: GraphPool | None  # None: run the compiled pieces without capture (CPU)
    capturing: bool = False     # record a graph for token counts that have none yet
    # run every piece's compiled code, no replay or capture of its own: while the runner captures
    # a whole forward (pieces and attention) into one graph
    passthrough: bool = False
    check_addresses: bool = False

    @property
    def use_graphs(self) -> bool:
        return self.graph_pool is not None

    @property
    def graphs_captured(self) -> int:
        return self.graph_pool.captured[GraphMode.PIECE] if self.graph_pool is not None else 0


TokenCount = Callable[[tuple], int]


class PieceGraphs:
    """One compiled piece and its graphs, one per captured token count."""

    def __init__(self, name: str, index: int, runnable: Callable[..., Any],
                 token_count: TokenCount | None, state: GraphCaptureState,
                 is_last: bool) -> None:
        self.name, self.index = name, index
        self.runnable = runnable           # compiled for the general (symbolic) token count
        self.token_count = token_count     # None: the piece does not depend on the token count
        self.state = state
        self.is_last = is_last
        self.graphs: dict[int, CapturedGraph] = {}

    def __call__(self, *args: Any) -> Any:
        if self.token_count is None or not self.state.use_graphs or self.state.passthrough:
            return self.runnable(*args)
        num_tokens = self.token_count(args)
        captured = self.graphs.get(num_tokens)
        if captured is not None:
            if self.state.check_addresses:
                self._check_addresses(captured, args, num_tokens)
            captured.graph.replay()
            return captured.output
        if self.state.capturing:
            return self._capture(num_tokens, args)
        return self.runnable(*args)

    def _capture(self, num_tokens: int, args: tuple) -> Any:
        # nothing in this forward reads the last output again: its memory goes back to the pool
        # at once, so the next (smaller) capture reuses it
        captured = self.state.graph_pool.capture(GraphMode.PIECE, num_tokens,
                                                 lambda: self.runnable(*args),
                                                 weak_output=self.is_last, inputs=args)
        output = captured.output
        # the replays' output: weak references (the later pieces of this forward hold the
        # tensors themselves until it returns)
        captured.output = weak_ref_tensors(output)
        self.graphs[num_tokens] = captured
        return output

    def _check_addresses(self, captured: CapturedGraph, args: tuple, num_tokens: int) -> None:
        now = [a.data_ptr() if isinstance(a, torch.Tensor) else 0 for a in args]
        for i, (then, addr) in enumerate(zip(captured.input_addresses, now)):
            if then != addr:
                raise AssertionError(
                    f"piece {self.name} (size {num_tokens}): argument {i} moved from {then:#x} "
                    f"to {addr:#x} since capture; graph replay would read stale memory")

    def __repr__(self) -> str:
        return (f"PieceGraphs({self.name}, index={self.index}, sizes={sorted(self.graphs)}, "
                f"last={self.is_last})")


class ReplayPlan:
    """One forward of one captured size as a flat list of zero-argument steps.

    Once every piece has a graph for a size, a forward of that size is always the same sequence:
    replay piece 0's graph, call the splitting op on tensors that piece returned (the same
    objects every replay: weak references into the pool), replay piece 1's graph, ... and return
    the last piece's output. The plan is that sequence, recorded from one forward after capture
    (`PiecewiseBackend.build_replay_plan`): the graphs' `replay` methods and the splitting ops'
    functions with their arguments bound. Running it skips the split graph's generated code, the
    per-piece token-count lookups and the per-call argument lists.

    Valid while the inputs the graphs read stay where they were captured: the runner's static
    buffers (the runner checks it still holds the ones the plan was recorded with) and the
    parameters (updated in place only, as for any CUDA graph).
    """

    def __init__(self, size: int, steps: list[Callable[[], Any]], output: Any,
                 graph_calls: list[tuple[PieceGraphs, CapturedGraph, tuple]],
                 state: GraphCaptureState, lead: int = 0) -> None:
        self.size = size
        self.steps = steps
        self.output = output
        self.graph_calls = graph_calls  # (piece, its graph, the arguments it was recorded with)
        self.state = state
        # the leading graph replays, before the first splitting op: they read only the static
        # input buffers and parameters, so `start` may run them before the caller has worked
        # out anything about the batch (its attention metadata, the forward context)
        self.lead = lead
        self.replays = 0

    def __call__(self) -> Any:
        self.start()
        return self.finish()

    def start(self) -> None:
        """Launch the leading graph replays (see `lead`); `finish` runs the rest."""
        if self.state.check_addresses:
            for piece, captured, args in self.graph_calls:
                piece._check_addresses(captured, args, self.size)
        for step in self.steps[:self.lead]:
            step()

    def finish(self) -> Any:
        """The steps after `start`'s (splitting ops need the forward context); the output."""
        for step in self.steps[self.lead:]:
            step()
        self.replays += 1
        return self.output

    def __repr__(self) -> str:
        return (f"ReplayPlan(size={self.size}, {len(self.graph_calls)} graphs, "
                f"{len(self.steps) - len(self.graph_calls)} eager calls, lead {self.lead})")


__all__ = ["GraphCaptureState", "PieceGraphs", "ReplayPlan", "TokenCount"]
