"""Drives a ModelRunner by hand (allocating rows and slots) for model-level tests."""
from __future__ import annotations

import torch

from tessera.forward.batch import ForwardBatch, ForwardMode


class RunnerDriver:
    def __init__(self, runner) -> None:
        self.runner = runner
        self.lens: dict[int, int] = {}

    def new_request(self) -> int:
        row = self.runner.req_to_token_pool.alloc()
        self.lens[row] = 0
        return row

    def step(self, items: list[tuple[int, list[int]]], mode: ForwardMode = ForwardMode.EXTEND,
             all_logits: bool = True):
        """items: (row, new token ids). Returns (next-token logits [B, V], all logits [T, V])."""
        rows, prefix, extend, ids, locs = [], [], [], [], []
        for row, new in items:
            slots = self.runner.allocator.alloc(len(new))
            assert slots is not None, "KV pool exhausted in test"
            # req_to_token is written by runner.forward (ModelRunner.record_slots)
            rows.append(row)
            prefix.append(self.lens[row])
            extend.append(len(new))
            ids.extend(new)
            locs.append(slots)
            self.lens[row] += len(new)
        fb = ForwardBatch.build(mode, ids, rows, prefix, extend, torch.cat(locs),
                                self.runner.device, return_all_logits=all_logits)
        out = self.runner.forward(fb)
        return out.next_token_logits, out.all_logits
