"""Token-granular KV storage built from a KV-cache spec, and the req_to_token table mapping
(request row, position) -> slot. Slot 0 of every buffer is the padding dump slot."""
from __future__ import annotations

import torch

from tessera.cache.spec import KVCacheSpec, MHASpec, MLASpec


class KVPool:
    """Per-layer buffers indexed by slot; `size` usable slots (1..size)."""

    def __init__(self, spec: KVCacheSpec, size: int, device: torch.device | str) -> None:
        self.spec, self.size, self.device = spec, size, torch.device(device)
        self.dtype, self.num_layers = spec.dtype, spec.num_layers

    def bytes_per_token(self) -> int:
        return self.spec.bytes_per_token()


class MHAKVPool(KVPool):
    """One K and one V buffer [size + 1, kv_heads, head_dim] per layer."""

    def __init__(self, spec: MHASpec, size: int, device: torch.device | str) -> None:
        super().__init__(spec, size, device)
        self.num_kv_heads, self.head_dim = spec.num_kv_heads, spec.head_dim
        shape = (size + 1, spec.num_kv_heads, spec.head_dim)
        self.k_buffers = [torch.zeros(shape, dtype=spec.dtype, device=device)
                          for _ in range(spec.num_layers)]
        self.v_buffers = [torch.zeros(shape, dtype=spec.dtype, device=device)
                          for _ in range(spec.num_layers)]

    def set_kv(self, layer_id: int, loc: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k_buffers[layer_id][loc] = k.to(self.dtype)
        self.v_buffers[layer_id][loc] = v.to(self.dtype)


class MLAKVPool(KVPool):
    """One latent buffer [size + 1, kv_lora_rank + rope_dim] per layer."""

    def __init__(self, spec: MLASpec, size: int, device: torch.device | str) -> None:
        super().__init__(spec, size, device)
        self.latent_buffers = [torch.zeros((size + 1, spec.latent_dim), dtype=spec.dtype,
                                           device=device) for _ in range(spec.num_layers)]

    def set_latent(self, layer_id: int, loc: torch.Tensor, latent: torch.Tensor) -> None:
        self.latent_buffers[layer_id][loc] = latent.to(self.dtype)


def make_kv_pool(spec: KVCacheSpec, size: int, device: torch.device | str) -> KVPool:
    if isinstance(spec, MHASpec):
        return MHAKVPool(spec, size, device)
    if isinstance(spec, MLASpec):
        return MLAKVPool(spec, size, device)
    raise TypeError(f"no KV pool for spec {spec!r}")


class ReqToTokenPool:
    """Rows of slot ids, one row per running request, `max_context_len` columns."""

    def __init__(self, max_reqs: int, max_context_len: int, device: torch.device | str) -> None:
        self.max_reqs, self.max_context_len = max_reqs, max_context_len
        self.req_to_token = torch.zeros((max_reqs, max_context_len), dtype=torch.int32,
                                        device=device)
        self.free_rows = list(range(max_reqs))
        # under tensor parallelism rank 0's scheduler writes rows (cached prefixes) that the
        # other ranks' tables must repeat: the writes since the last batch plan, in order
        # (None: not recorded)
        self.write_log: list[tuple[int, int, torch.Tensor]] | None = None

    def available_size(self) -> int:
        return len(self.free_rows)

    def alloc(self) -> int | None:
        return self.free_rows.pop() if self.free_rows else None

    def free(self, row: int) -> None:
        self.free_rows.append(row)

    def write(self, row: int, start: int, slots: torch.Tensor) -> None:
        self.req_to_token[row, start:start + slots.numel()] = slots.to(torch.int32)
        if self.write_log is not None:
            self.write_log.append((row, start, slots))

    def take_write_log(self) -> list[tuple[int, int, torch.Tensor]]:
        """The writes recorded since the last call (and a fresh log)."""
        log, self.write_log = self.write_log or [], []
        return log

    def read(self, row: int, start: int, end: int) -> torch.Tensor:
        return self.req_to_token[row, start:end].to(torch.int64)
