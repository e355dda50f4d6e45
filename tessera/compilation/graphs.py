"""The one graph machinery: every captured graph of a process, whatever captured it.

Three kinds of graph are captured, each per size:
  * DECODE: the whole model and its LM head for a decode batch of `size` requests
    (tessera.runner.cuda_graph_runner);
  * PIECE: one compiled piece of the split backbone for `size` tokens
    (tessera.compilation.piecewise.PieceGraphs);
  * FULL_EXTEND: the pieces and the attention launches between them as one graph, for extend
    batches of `size` tokens and a few requests (tessera.runner.piecewise_graph_runner).
They share one `GraphPool`: one memory pool (captured largest size first, so smaller graphs reuse
the larger ones' blocks), one capture stream, one capture context (`capturing`: measured time and
memory, garbage collection and allocator flushes kept out of the loop) and one wrapper keyed by
(mode, size) for what a capture produced (`CapturedGraph`). Batches are padded by one rule,
`padded_size`: the smallest captured size that holds them.
"""
from __future__ import annotations

import bisect
import contextlib
import dataclasses
import enum
import gc
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch

from tessera.compilation.weak_ref import weak_ref_tensors
from tessera.platforms.base import Platform

logger = logging.getLogger(__name__)


class GraphMode(enum.Enum):
    DECODE = "decode"
    PIECE = "piece"
    FULL_EXTEND = "full_extend"


@dataclasses.dataclass
class CapturedGraph:
    """One captured graph: what it was captured as, the graph, and its output (the tensors its
    replays write; weak references into the pool where the caller asked for them)."""

    mode: GraphMode
    size: int
    graph: Any
    output: Any
    # data_ptr of each tensor argument at capture (0: not a tensor), for address checks
    input_addresses: list[int] = dataclasses.field(default_factory=list)

    def replay(self) -> Any:
        self.graph.replay()
        return self.output


def padded_size(size: int, captured: list[int]) -> int:
    """The smallest captured size >= `size` (`captured` ascending): the one padding rule of
    decode batches (requests) and extend batches (tokens)."""
    i = bisect.bisect_left(captured, size)
    if i == len(captured):
        raise ValueError(f"size {size} exceeds the largest captured {captured[-1]}")
    return captured[i]


class GraphPool:
    """The owner of every graph's memory: the platform's pool handle, the capture stream, and a
    count of what was captured per mode. One per model runner."""

    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.handle = platform.graph_pool_handle()
        self.stream = platform.new_stream()
        self.captured: Counter[GraphMode] = Counter()
        self.capture_seconds = 0.0
        self.capture_memory_bytes = 0

    def capture(self, mode: GraphMode, size: int, forward: Callable[[], Any], *,
                weak_output: bool = False, inputs: tuple = ()) -> CapturedGraph:
        """Capture `forward()` into a graph of the pool. `weak_output`: nothing reads the output
        before the next replay, so its memory goes back to the pool at once (the next, smaller
        capture reuses it; the replay writes it again). `inputs`: arguments whose addresses the
        replays must find unchanged (recorded for `check_addresses`)."""
        graph = self.platform.graph_class()()
        with self.platform.graph_context(graph, pool=self.handle, stream=self.stream):
            output = forward()
            if weak_output:
                output = weak_ref_tensors(output)
        self.captured[mode] += 1
        addresses = [a.data_ptr() if isinstance(a, torch.Tensor) else 0 for a in inputs]
        return CapturedGraph(mode, size, graph, output, addresses)

    @contextlib.contextmanager
    def capturing(self, label: str, sizes: list[int], device: torch.device
                  ) -> Iterator[tuple[list[int], dict[str, float]]]:
        """The setting of a capture pass: yields `sizes` largest first, with the capture stream,
        inference mode and quiet captures (`_quiet_capture`) on; afterwards fills the pass's wall
        time and the device memory its graphs hold into the yielded dict, adds them to this
        pool's totals and logs them."""
        platform = self.platform
        platform.synchronize()
        platform.empty_cache()  # eager activations before the pass are not the graphs' memory
        free_before = platform.mem_get_info()[0]
        start = time.perf_counter()
        cost: dict[str, float] = {}
        with (_quiet_capture(device), platform.stream_context(self.stream),
              torch.inference_mode()):
            yield sorted(sizes, reverse=True), cost
        platform.synchronize()
        cost["seconds"] = time.perf_counter() - start
        # what the graphs hold, not what the eager warm-ups left in the allocator's cache
        platform.empty_cache()
        cost["bytes"] = free_before - platform.mem_get_info()[0]
        self.capture_seconds += cost["seconds"]
        self.capture_memory_bytes += int(cost["bytes"])
        logger.info("captured %s for %d sizes (%d..%d) in %.2f s using %.1f MiB", label,
                    len(sizes), min(sizes), max(sizes), cost["seconds"], cost["bytes"] / 2**20)


@contextlib.contextmanager
def _quiet_capture(device: torch.device) -> Iterator[None]:
    """Capturing ~1000 graphs: skip the per-capture cache flush and full garbage collection.

    Each capture context empties the allocator cache (a synchronising cudaFree of every cached
    block, which the eager attention between pieces then allocates again) and may run gc.collect().
    Collect once, freeze the survivors so any later collection is cheap, and empty the cache once.
    """
    gc.collect()
    gc.freeze()
    module = torch.get_device_module(device.type)
    patch: contextlib.AbstractContextManager = contextlib.nullcontext()
    if hasattr(module, "empty_cache"):
        module.empty_cache()
        patch = mock.patch.object(module, "empty_cache", lambda: None)
    try:
        with patch:
            yield
    finally:
        gc.unfreeze()


__all__ = ["CapturedGraph", "GraphMode", "GraphPool", "padded_size"]
