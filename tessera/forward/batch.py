"""ForwardBatch: everything one model forward needs to know about the batch.

Token layout: the new tokens of all requests concatenated in batch order. A DECODE batch is the
special case of one new token per request; EXTEND covers prefill, extend-on-a-cached-prefix and
batches that mix those with decoding requests (those contribute one token each).
"""
from __future__ import annotations

import dataclasses
import enum
from typing import Any

import torch

from tessera.platforms.transfer import to_device_async


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
    # the rows of req_pool_indices on the host (what a TP batch plan sends; set by `build`)
    req_pool_indices_cpu: list[int] | None = None
    # DECODE batches built from host token ids: [3, B] int64 rows positions | req_pool_indices |
    # input_ids, one tensor (the fields above are views of it), so a decode graph loads all
    # three with one copy
    decode_inputs: torch.Tensor | None = None
    # [B] int64, the row of each request's last new token (where its next-token logits come
    # from); set by `build` for non-decode batches, computed from the lengths when None
    last_token_loc: torch.Tensor | None = None
    # the static batch of a whole-forward extend graph (PiecewiseGraphRunner): its last request
    # is the padding up to the graph's token count (attention zeroes its output rows), and the
    # host lists above are placeholders; attention sizes its launch by num_tokens
    pad_request: bool = False
    # what the attention backend worked out for this batch (AttentionBackend.init_forward_
    # metadata): shared by every layer of the forward, kept with the batch it describes
    attn_metadata: Any = None

    def fill_input_ids(self, positions: list[int], source: torch.Tensor, rows: list[int]) -> None:
        """input_ids[positions[i]] = source[rows[i]] on the device: the tokens a step sampled,
        fed to the next step before the host has read them (overlap schedule). In place, so a
        decode batch's `decode_inputs` (which views the same memory) sees them too. The usual
        decode step (every row from the step before, in order) is one copy."""
        n = len(positions)
        first, row0 = positions[0], rows[0]
        if positions == list(range(first, first + n)) and rows == list(range(row0, row0 + n)):
            self.input_ids[first:first + n].copy_(source[row0:row0 + n])
            return
        index = to_device_async(positions + rows, torch.int64, self.input_ids.device)
        self.input_ids[index[:n]] = source[index[n:]]

    def last_token_rows(self) -> torch.Tensor:
        """[B] int64, the row of each request's last new token: last_token_loc (from the host,
        with the batch's copy) or worked out from the lengths."""
        if self.last_token_loc is not None:
            return self.last_token_loc
        return (self.extend_start_loc + self.extend_seq_lens - 1).long()

    def logit_rows(self) -> torch.Tensor | None:
        """The rows whose final hidden states the step needs (LlamaModel.finish): each
        request's last new token in an EXTEND batch; None (every row) for DECODE, where row i is
        request i's token, and when the batch asks for every token's logits."""
        if self.mode is ForwardMode.DECODE or self.return_all_logits:
            return None
        return self.last_token_rows()

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
        """Build from host lists with ONE host->device copy.

        All host-side integers are packed into one host tensor (pinned off the CPU: int64 ids and
        positions, then the int32 lengths in the bytes after them), copied without blocking and
        viewed on the device. A blocking copy per field made the host wait
        for the device queue seven times per step: on a ~4 ms decode step that is visible.
        """
        assert len(req_pool_indices) == len(prefix_lens) == len(extend_lens)
        if mode is ForwardMode.DECODE:
            assert all(n == 1 for n in extend_lens), "decode batches have one new token each"
        device = torch.device(device)
        seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
        positions: list[int] = []
        starts: list[int] = []
        for p, e in zip(prefix_lens, extend_lens):
            starts.append(len(positions))
            positions.extend(range(p, p + e))
        t, b = len(positions), len(req_pool_indices)
        # layout: int64 positions [t] | req_pool_indices [b] | input_ids [t] (if on the host) |
        # each request's last new token [b] (not for decode: rows 0..b-1), then the 4 x [b]
        # int32 lengths in the bytes after them (no cast kernel on the device)
        ids_on_host = not isinstance(input_ids, torch.Tensor)
        longs = [*positions, *req_pool_indices]
        if ids_on_host:
            assert len(input_ids) == t, "one input id per new token"
            longs.extend(input_ids)
        with_last = mode is not ForwardMode.DECODE
        if with_last:  # every request runs >= 1 new token (the scheduler leaves one uncached)
            assert min(extend_lens, default=1) >= 1, "a request with no new token"
            longs.extend(s + e - 1 for s, e in zip(starts, extend_lens))
        n64 = len(longs)
        host = torch.empty(n64 + 2 * b, dtype=torch.int64, pin_memory=device.type != "cpu")
        host[:n64] = torch.tensor(longs, dtype=torch.int64)
        host[n64:].view(torch.int32).copy_(
            torch.tensor([*seq_lens, *prefix_lens, *extend_lens, *starts], dtype=torch.int32))
        packed = host.to(device, non_blocking=True)
        lens = packed[n64:].view(torch.int32).view(4, b)
        ids = packed[t + b:t + b + t] if ids_on_host else input_ids.to(device=device,
                                                                       dtype=torch.int64)
        decode_inputs = (packed[:3 * b].view(3, b)
                         if mode is ForwardMode.DECODE and ids_on_host else None)
        return cls(
            mode=mode,
            input_ids=ids,
            positions=packed[:t],
            out_cache_loc=out_cache_loc.to(device=device, dtype=torch.int64),
            req_pool_indices=packed[t:t + b],
            seq_lens=lens[0],
            extend_prefix_lens=lens[1],
            extend_seq_lens=lens[2],
            extend_start_loc=lens[3],
            seq_lens_cpu=seq_lens,
            extend_prefix_lens_cpu=list(prefix_lens),
            extend_seq_lens_cpu=list(extend_lens),
            return_all_logits=return_all_logits,
            req_pool_indices_cpu=list(req_pool_indices),
            decode_inputs=decode_inputs,
            last_token_loc=packed[n64 - b:n64] if with_last else None,
        )
