"""ForwardBatch: everything one model forward needs to know about the batch.

Token layout: the new tokens of all requests concatenated in batch order. A DECODE batch is the
special case of one new token per request; EXTEND covers prefill, extend-on-a-cached-prefix and
batches that mix those with decoding requests (those contribute one token each).
"""
from __future__ import annotations

import dataclasses
import enum

import torch


class ForwardMode(enum.Enum):
    EXTEND = "extend"
    DECODE = "decode"


@dataclasses.dataclass
class ForwardBatch:
    mode: ForwardMode
    input_ids: torch.Tensor          # [T] int64, new tokens
    positions: torch.Tensor          # [T] int64, absolute position of each new token
    out_cache_loc: torch.Tensor      # [T] int64, KV slot each new token writes
    req_pool_indices: torch.Tensor   # [B] int64, row of each request in req_to_token
    seq_lens: torch.Tensor           # [B] int32, prefix + new tokens (= tokens in cache after)
    extend_prefix_lens: torch.Tensor  # [B] int32, tokens already cached before this forward
    extend_seq_lens: torch.Tensor    # [B] int32, new tokens of each request
    extend_start_loc: torch.Tensor   # [B] int32, offset of each request's first new token
    seq_lens_cpu: list[int]
    extend_prefix_lens_cpu: list[int]
    extend_seq_lens_cpu: list[int]
    return_all_logits: bool = False

    @property
    def batch_size(self) -> int:
        return len(self.seq_lens_cpu)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def max_extend_len(self) -> int:
        return max(self.extend_seq_lens_cpu, default=0)

    @property
    def max_seq_len(self) -> int:
        return max(self.seq_lens_cpu, default=0)

    @classmethod
    def build(
        cls,
        mode: ForwardMode,
        input_ids: list[int] | torch.Tensor,
        req_pool_indices: list[int],
        prefix_lens: list[int],
        extend_lens: list[int],
        out_cache_loc: torch.Tensor,
        device: torch.device | str,
        return_all_logits: bool = False,
    ) -> ForwardBatch:
        """Build from host lists (one host->device copy per field)."""
        assert len(req_pool_indices) == len(prefix_lens) == len(extend_lens)
        if mode is ForwardMode.DECODE:
            assert all(n == 1 for n in extend_lens), "decode batches have one new token each"
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        positions: list[int] = []
        starts: list[int] = []
        for p, e in zip(prefix_lens, extend_lens):
            starts.append(len(positions))
            positions.extend(range(p, p + e))

        def i32(x: list[int]) -> torch.Tensor:
            return torch.tensor(x, dtype=torch.int32, device=device)

        if not isinstance(input_ids, torch.Tensor):
            input_ids = torch.tensor(input_ids, dtype=torch.int64)
        return cls(
            mode=mode,
            input_ids=input_ids.to(device=device, dtype=torch.int64),
            positions=torch.tensor(positions, dtype=torch.int64, device=device),
            out_cache_loc=out_cache_loc.to(device=device, dtype=torch.int64),
            req_pool_indices=torch.tensor(req_pool_indices, dtype=torch.int64, device=device),
            seq_lens=i32(seq_lens),
            extend_prefix_lens=i32(prefix_lens),
            extend_seq_lens=i32(extend_lens),
            extend_start_loc=i32(starts),
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=list(prefix_lens),
            extend_seq_lens_cpu=list(extend_lens),
            return_all_logits=return_all_logits,
        )
