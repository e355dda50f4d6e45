"""Platform detection. `current_platform()` is decided once per process (MUSA, then CUDA, then CPU).

`TESSERA_PLATFORM=cpu|cuda|musa` forces a choice (tests use it).
"""
from __future__ import annotations

import functools
import logging
import os

import torch

from tessera.platforms.base import Platform, PlatformKind, triton_available
from tessera.platforms.cpu import CpuPlatform
from tessera.platforms.cuda import CudaPlatform
from tessera.platforms.musa import MusaPlatform

logger = logging.getLogger(__name__)

# detection order: MUSA first (a torch_musa build may also report CUDA-compatible APIs), then CUDA
_PLATFORMS: dict[str, type[Platform]] = {"musa": MusaPlatform, "cuda": CudaPlatform,
                                         "cpu": CpuPlatform}


def _platform_classes() -> dict[str, type[Platform]]:
    return dict(_PLATFORMS)


def detect_platform() -> Platform:
    classes = _platform_classes()
    forced = os.environ.get("TESSERA_PLATFORM")
    if forced:
        if forced not in classes:
            raise ValueError(f"TESSERA_PLATFORM={forced!r}; choose one of {sorted(classes)}")
        return classes[forced]()
    for name in ("musa", "cuda"):
        cls = classes.get(name)
        if cls is not None and cls.is_available():
            return cls()
    return CpuPlatform()


@functools.lru_cache(maxsize=1)
def current_platform() -> Platform:
    platform = detect_platform()
    logger.debug("platform: %r", platform)
    return platform


def platform_for_device(device: str) -> Platform:
    """The platform that owns a device string such as 'cpu', 'cuda', 'cuda:1' or 'musa'."""
    device_type = device.split(":")[0]
    if device_type == current_platform().device_type:
        return current_platform()
    classes = _platform_classes()
    if device_type not in classes:
        raise ValueError(f"unknown device {device!r}; choose one of {sorted(classes)}")
    return classes[device_type]()


@functools.cache
def _platform_of_type(device_type: str) -> Platform:
    return platform_for_device(device_type)


def platform_of(device: torch.device) -> Platform:
    """The platform owning a torch.device (cached per device type: cheap on hot paths)."""
    return _platform_of_type(device.type)


__all__ = ["CpuPlatform", "CudaPlatform", "MusaPlatform", "Platform", "PlatformKind",
           "current_platform", "detect_platform", "platform_for_device", "platform_of",
           "triton_available"]
