"""Free-slot allocator for the token-granular KV pool.

Slot 0 is reserved: padded tokens of graph replays write their K/V there, so it is never handed out.
Slots live in a device tensor so alloc/free need no host<->device copies of slot ids.
"""
from __future__ import annotations

import torch


class TokenSlotAllocator:
    def __init__(self, size: int, device: torch.device | str) -> None:
        if size < 1:
            raise ValueError(f"KV pool must hold at least 1 token, got {size}")
        self.size = size  # usable slots: 1..size
        self.device = torch.device(device)
        self.clear()

    def clear(self) -> None:
        self.free_slots = torch.arange(1, self.size + 1, dtype=torch.int64, device=self.device)

    def available_size(self) -> int:
        return int(self.free_slots.numel())

    def alloc(self, n: int) -> torch.Tensor | None:
        """n free slots (int64, on device), or None when fewer than n are free."""
        if n > self.free_slots.numel():
            return None
        out, self.free_slots = self.free_slots[:n], self.free_slots[n:]
        return out

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self.free_slots = torch.cat([self.free_slots, slots.to(self.free_slots)])
