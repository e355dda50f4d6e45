"""Token-granular KV storage: one K and one V buffer per layer, indexed by slot, plus the
req_to_token table mapping (request row, position) -> slot."""
from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class KVPool:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, size: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        self.num_layers, self.num_kv_heads, self.head_dim = num_layers, num_kv_heads, head_dim
        self.size, self.dtype, self.device = size, dtype, torch.device(device)
        shape = (size + 1, num_kv_heads, head_dim)  # +1: slot 0 is the padding dump slot
        self.k_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v_buffers = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]

    @staticmethod
    def bytes_per_token(num_layers: int, num_kv_heads: int, head_dim: int,
                        dtype: torch.dtype) -> int:
        return 2 * num_layers * num_kv_heads * head_dim * torch.finfo(dtype).bits // 8

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_buffers[layer_id][loc] = k.to(self.dtype)
        self.v_buffers[layer_id][loc] = v.to(self.dtype)


class ReqToTokenPool:
    """Rows of slot ids, one row per running request, `max_context_len` columns."""

    def __init__(self, max_reqs: int, max_context_len: int, device: torch.device | str) -> None:
        self.max_reqs, self.max_context_len = max_reqs, max_context_len
        self.req_to_token = torch.zeros((max_reqs, max_context_len), dtype=torch.int32,
                                        device=device)
        self.free_rows = list(range(max_reqs))

    def available_size(self) -> int:
        return len(self.free_rows)

    def alloc(self) -> int | None:
        return self.free_rows.pop() if self.free_rows else None

    def free(self, row: int) -> None:
        self.free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        self.req_to_token[row, start:start + slots.numel()] = slots.to(torch.int32)

    def read(self, row: int, start: int, end: int) -> torch.Tensor:
        return self.req_to_token[row, start:end].to(torch.int64)
