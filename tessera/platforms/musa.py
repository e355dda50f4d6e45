"""Moore Threads MUSA through torch_musa.

torch_musa renames PyTorch's PrivateUse1 backend to "musa" and installs `torch.musa`, a mirror of
`torch.cuda` (MUSAGraph, graph_pool_handle, Stream, Event, mem_get_info, ...), and sets
`torch.version.musa`. Collective communication is MCCL. No MUSA hardware was available while this
was written: everything here is exercised by a simulated device on CPU (tests/platforms), which
checks detection, op binding, fake kernels and the FX patch, not the runtime calls themselves.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch

from tessera.platforms.base import Platform, PlatformKind

logger = logging.getLogger(__name__)


def load_musa_runtime() -> ModuleType | None:
    """`torch.musa`, importing torch_musa first if it is installed but not yet imported.

    Importing torch_musa is what registers the device name, `torch.musa` and the vendor ops, so
    detection and vendor-op lookups both go through here. Without torch_musa installed this costs
    one find_spec and imports nothing.
    """
    module = getattr(torch, "musa", None)
    if module is None and importlib.util.find_spec("torch_musa") is not None:
        try:
            importlib.import_module("torch_musa")
        except ImportError as exc:  # a broken install must not break CUDA/CPU detection
            logger.warning("torch_musa is installed but failed to import: %s", exc)
            return None
        module = getattr(torch, "musa", None)
    return module


def _musa() -> ModuleType:
    module = load_musa_runtime()
    if module is None:
        raise RuntimeError("MUSA platform used without torch_musa (torch.musa is missing)")
    return module


class MusaPlatform(Platform):
    kind = PlatformKind.MUSA
    device_type = "musa"
    dist_backend = "mccl"
    default_attention_backend = "triton"
    default_sampling_backend = "triton"
    supports_full_graph = True
    supports_piecewise_graph = True
    supports_triton = True  # torch_musa's Triton backend compiles the same kernels as CUDA's

    def __init__(self) -> None:
        module = load_musa_runtime()
        # graphs arrived in torch_musa releases after the first; without MUSAGraph run eagerly
        has_graphs = module is not None and hasattr(module, "MUSAGraph")
        self.supports_full_graph = has_graphs
        self.supports_piecewise_graph = has_graphs

    @classmethod
    def is_available(cls) -> bool:
        module = load_musa_runtime()
        if module is None or getattr(torch.version, "musa", None) is None:
            return False
        try:
            return bool(module.is_available())
        except RuntimeError:  # driver present but unusable: treat as no device
            return False

    # ---- devices and memory -------------------------------------------------------------------
    def set_device(self, index: int) -> None:
        _musa().set_device(index)

    def device_count(self) -> int:
        return int(_musa().device_count())

    def device_name(self, index: int = 0) -> str:
        return _musa().get_device_name(index)

    def synchronize(self) -> None:
        _musa().synchronize()

    def mem_get_info(self) -> tuple[int, int]:
        free, total = _musa().mem_get_info()
        return int(free), int(total)

    def memory_allocated(self) -> int:
        return int(_musa().memory_allocated())

    def empty_cache(self) -> None:
        _musa().empty_cache()

    def manual_seed(self, seed: int) -> None:
        torch.manual_seed(seed)
        _musa().manual_seed_all(seed)

    # ---- graphs, streams, events --------------------------------------------------------------
    def graph_class(self) -> type:
        if not self.supports_full_graph:
            raise RuntimeError("this torch_musa has no MUSAGraph; upgrade torch_musa for graphs")
        return _musa().MUSAGraph

    def graph_pool_handle(self) -> Any:
        return _musa().graph_pool_handle()

    def graph_context(self, graph: Any, pool: Any = None, stream: Any = None):
        return _musa().graph(graph, pool=pool, stream=stream)

    def is_stream_capturing(self) -> bool:
        return bool(_musa().is_current_stream_capturing())

    def current_stream(self) -> Any:
        return _musa().current_stream()

    def new_stream(self) -> Any:
        return _musa().Stream()

    def stream_context(self, stream: Any):
        return _musa().stream(stream)

    def event(self, enable_timing: bool = False) -> Any:
        return _musa().Event(enable_timing=enable_timing)

    # ---- compilation --------------------------------------------------------------------------
    def compile_patches(self) -> list[Callable[[], None]]:
        from tessera.platforms.fx_patches import patch_fx_device_constants

        return [patch_fx_device_constants]
