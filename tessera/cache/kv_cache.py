"""KVCache: the one owner of the KV memory, the slot allocator and the req_to_token table.

The model runner builds it from the model's KV-cache spec and hands it to the scheduler (which
allocates and frees rows and slots) and to the attention backend (which reads and writes the
buffers). Nothing else creates KV memory.

Who writes req_to_token (the single writer policy):
  * the scheduler writes a request's cached prefix (the radix-cache match) into its row when it
    admits the request, and only that;
  * every newly computed token's slot is written by the forward that fills it: ModelRunner's
    `record_slots` before the forward, or inside the forward where that saves a launch (decode
    graphs capture the write; an attention backend with `writes_extend_slots` writes them at
    layer 0 of an extend batch). Exactly one of those runs per forward.
Rows are never read past a request's written length.
"""
from __future__ import annotations

import torch

from tessera.cache.allocator import TokenSlotAllocator
from tessera.cache.kv_pool import KVPool, ReqToTokenPool, make_kv_pool
from tessera.cache.spec import KVCacheSpec


class KVCache:
    def __init__(self, spec: KVCacheSpec, num_tokens: int, max_requests: int,
                 context_length: int, device: torch.device | str) -> None:
        self.spec = spec
        self.pool: KVPool = make_kv_pool(spec, num_tokens, device)
        self.allocator = TokenSlotAllocator(num_tokens, device)
        # +1 row: one row stays all zeros for graph padding (padded requests point at it)
        self.req_to_token_pool = ReqToTokenPool(max_requests + 1, context_length + 1, device)
        self.padding_req_row = self.req_to_token_pool.free_rows.pop(0)

    @property
    def num_tokens(self) -> int:
        return self.allocator.size

    def memory_bytes(self) -> int:
        return self.num_tokens * self.spec.bytes_per_token()
