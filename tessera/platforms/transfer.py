"""Host <-> device copies that do not wait for the device's queue.

`torch.tensor(data, device=...)` and `tensor.tolist()` on a device tensor both wait: the first
copies synchronously, the second for everything queued before it. With the overlap schedule the
host builds the next step while the device still runs the last one, so its copies must not wait:
host data goes through pinned memory with a non-blocking copy, and device results are copied
into pinned host memory behind an event that the reader waits for when it needs the values.
"""
from __future__ import annotations

from typing import Any

import torch


def to_device_async(data: list, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """A host list as a tensor on `device`, staged in pinned memory and copied without blocking."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.tensor(data, dtype=dtype)
    return torch.tensor(data, dtype=dtype, pin_memory=True).to(device, non_blocking=True)


def to_host_async(platform: Any, *tensors: torch.Tensor | None
                  ) -> tuple[list[torch.Tensor | None], Any]:
    """Start copying `tensors` (None stays None) to the host; returns the host tensors and an
    event recorded after the copies (None on the CPU, where the tensors are returned as they
    are). Read the host tensors only after `event.synchronize()`."""
    host = [t if t is None or t.device.type == "cpu" else t.to("cpu", non_blocking=True)
            for t in tensors]
    event = platform.event()
    if event is not None:
        event.record()
    return host, event


__all__ = ["to_device_async", "to_host_async"]
