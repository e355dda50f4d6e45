from __future__ import annotations

import functools
from typing import Any

import torch

from tessera.platforms.base import Platform, PlatformKind


@functools.cache
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@functools.cache
def _capability_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def hopper_or_newer(device: torch.device) -> bool:
    """Whether `device` is an NVIDIA GPU of compute capability >= 9.0 (Hopper and later: PDL,
    the TMA engine, warpgroup MMAs), the GPUs tessera's Hopper-only kernel paths were measured
    on. False off CUDA (and on ROCm builds, whose capability numbers mean something else)."""
    if device.type != "cuda" or torch.version.cuda is None:
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability_major(index) >= 9


class CudaPlatform(Platform):
    kind = PlatformKind.CUDA
    device_type = "cuda"
    dist_backend = "nccl"
    default_attention_backend = "triton"
    default_sampling_backend = "triton"
    supports_full_graph = True
    supports_piecewise_graph = True
    supports_triton = True

    @classmethod
    def is_available(cls) -> bool:
        return torch.version.cuda is not None and torch.cuda.is_available()

    def set_device(self, index: int) -> None:
        torch.cuda.set_device(index)

    # Hopper (compute capability 9.0) and later have all three; they are where tessera's
    # Hopper-only kernel paths were measured.
    def supports_pdl(self, device: torch.device) -> bool:
        return hopper_or_newer(device)

    def has_tma(self, device: torch.device) -> bool:
        return hopper_or_newer(device)

    def has_warpgroup_mma(self, device: torch.device) -> bool:
        return hopper_or_newer(device)

    def has_fp8_mma(self, device: torch.device) -> bool:
        # FP8 tensor cores arrived with Ada (compute capability 8.9) and Hopper
        if device.type != "cuda" or torch.version.cuda is None:
            return False
        index = device.index if device.index is not None else torch.cuda.current_device()
        return _capability(index) >= (8, 9)

    def device_count(self) -> int:
        return torch.cuda.device_count()

    def device_name(self, index: int = 0) -> str:
        return torch.cuda.get_device_name(index)

    def synchronize(self) -> None:
        torch.cuda.synchronize()

    def mem_get_info(self) -> tuple[int, int]:
        return torch.cuda.mem_get_info()

    def memory_allocated(self) -> int:
        return torch.cuda.memory_allocated()

    def empty_cache(self) -> None:
        torch.cuda.empty_cache()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)

    def graph_class(self) -> type:
        return torch.cuda.CUDAGraph

    def graph_pool_handle(self) -> Any:
        return torch.cuda.graph_pool_handle()

    def graph_context(self, graph: Any, pool: Any = None, stream: Any = None):
        return torch.cuda.graph(graph, pool=pool, stream=stream)

    def is_stream_capturing(self) -> bool:
        return torch.cuda.is_current_stream_capturing()

    def current_stream(self) -> Any:
        return torch.cuda.current_stream()

    def new_stream(self) -> Any:
        return torch.cuda.Stream()

    def stream_context(self, stream: Any):
        return torch.cuda.stream(stream)

    def event(self, enable_timing: bool = False) -> Any:
        return torch.cuda.Event(enable_timing=enable_timing)
