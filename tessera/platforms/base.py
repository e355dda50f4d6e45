"""The Platform interface: everything that differs between CUDA, MUSA and CPU lives behind it."""
from __future__ import annotations

import enum
import functools
import importlib.util
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch


@functools.cache
def triton_available() -> bool:
    """Triton is an optional dependency; without it the fast paths bind native instead."""
    return importlib.util.find_spec("triton") is not None


class PlatformKind(enum.Enum):
    CUDA = "cuda"
    MUSA = "musa"
    CPU = "cpu"


class Platform(ABC):
    """One accelerator family. Subclasses answer questions; callers never branch on vendor names.

    It answers: device type and count; whether full (decode) and piecewise graphs are supported,
    the graph class, memory-pool handle and capture context; streams and events; memory info;
    the distributed backend; the default attention and sampling backends; whether Triton kernels
    run here; and which patches to apply before torch.compile.
    """

    kind: PlatformKind
    device_type: str
    dist_backend: str = "gloo"
    default_attention_backend: str = "torch_native"
    default_sampling_backend: str = "torch"
    supports_full_graph: bool = False
    supports_piecewise_graph: bool = False
    supports_triton: bool = False

    @classmethod
    @abstractmethod
    def is_available(cls) -> bool:
        """True when this platform's runtime and at least one device are present."""

    # ---- devices and memory -------------------------------------------------------------------
    def device(self, index: int = 0) -> torch.device:
        if self.device_type == "cpu":
            return torch.device("cpu")
        return torch.device(self.device_type, index)

    def set_device(self, index: int) -> None:
        pass

    def device_count(self) -> int:
        return 1

    def device_name(self, index: int = 0) -> str:
        return self.device_type

    def synchronize(self) -> None:
        pass

    def mem_get_info(self) -> tuple[int, int]:
        """(free, total) bytes of device memory."""
        import os

        page = os.sysconf("SC_PAGE_SIZE")
        return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page

    def memory_allocated(self) -> int:
        return 0

    def empty_cache(self) -> None:
        pass

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)

    # ---- kernel capabilities of a device (Hopper-class paths of tessera's Triton kernels) -------
    def supports_pdl(self, device: torch.device) -> bool:
        """Programmatic dependent launch: a kernel may start while its predecessor finishes."""
        return False

    def has_tma(self, device: torch.device) -> bool:
        """A tensor memory accelerator that Triton's TMA descriptors can use."""
        return False

    def has_warpgroup_mma(self, device: torch.device) -> bool:
        """Warpgroup MMAs (the stream GEMM's few-row path was measured only where they exist)."""
        return False

    def has_fp8_mma(self, device: torch.device) -> bool:
        """Tensor-core MMAs on float8_e4m3fn operands (Triton's fp8 tl.dot); without them the
        block-FP8 kernels upcast their tiles to float32 (exact for e4m3 values)."""
        return False

    # ---- graphs, streams, events --------------------------------------------------------------
    def graph_class(self) -> type:
        raise RuntimeError(f"platform {self.kind.value} has no graphs")

    def graph_pool_handle(self) -> Any:
        raise RuntimeError(f"platform {self.kind.value} has no graphs")

    def graph_context(self, graph: Any, pool: Any = None, stream: Any = None):
        raise RuntimeError(f"platform {self.kind.value} has no graphs")

    def is_stream_capturing(self) -> bool:
        """True while the current stream is capturing a graph (allocations must be static)."""
        return False

    def current_stream(self) -> Any:
        return None

    def new_stream(self) -> Any:
        return None

    def stream_context(self, stream: Any):
        import contextlib

        return contextlib.nullcontext()

    def event(self, enable_timing: bool = False) -> Any:
        return None

    # ---- compilation --------------------------------------------------------------------------
    def compile_patches(self) -> list[Callable[[], None]]:
        """Callables to run once before torch.compile (e.g. FX codegen fixes for custom devices)."""
        return []

    def apply_compile_patches(self) -> None:
        for patch in self.compile_patches():
            patch()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device_type={self.device_type!r})"
