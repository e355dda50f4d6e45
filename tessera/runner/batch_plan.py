"""The batch plan: what rank 0 sends every step so all TP ranks run the identical forward.

Rank 0 owns the scheduler and the KV bookkeeping (allocator, request rows, radix cache). The
other ranks own only memory: their KV pools and req_to_token tables hold what rank 0 tells them
to write. A plan is

* a header, pickled over the gloo control group: the mode, the requests' rows and lengths, and
  the req_to_token writes rank 0's scheduler made since the last plan (cached prefixes);
* one int64 tensor over the TP group: the new tokens' ids and KV slots. The ids may still be on
  rank 0's device (the overlap schedule feeds the last step's samples without a host read), so
  they travel as a device tensor and nobody waits for the host.

A rank that receives a plan rebuilds the ForwardBatch with `ForwardBatch.build` (same lengths,
same rows, same slots) and runs `ModelRunner.forward` on it; frees and aborts need no message,
since the other ranks keep no allocation state. `None` as the header stops the other ranks.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from tessera.cache.kv_pool import ReqToTokenPool
from tessera.distributed import control_group, tp_group
from tessera.forward.batch import ForwardBatch, ForwardMode


@dataclasses.dataclass
class BatchPlan:
    mode: ForwardMode
    req_pool_indices: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    return_all_logits: bool
    table_writes: list[tuple[int, int, list[int]]]  # (row, start, slots) in order

    @property
    def num_tokens(self) -> int:
        return sum(self.extend_lens)


def _broadcast_header(header: BatchPlan | None) -> BatchPlan | None:
    box = [header]
    dist.broadcast_object_list(box, src=0, group=control_group().group)
    return box[0]


def send_plan(forward_batch: ForwardBatch, table: ReqToTokenPool) -> None:
    """Rank 0: broadcast `forward_batch` (and the table writes since the last plan)."""
    rows = forward_batch.req_pool_indices_cpu
    assert rows is not None, "a batch plan needs the rows on the host (ForwardBatch.build)"
    writes = [(row, start, slots.tolist()) for row, start, slots in table.take_write_log()]
    _broadcast_header(BatchPlan(forward_batch.mode, rows, forward_batch.extend_prefix_lens_cpu,
                                forward_batch.extend_seq_lens_cpu,
                                forward_batch.return_all_logits, writes))
    payload = torch.cat([forward_batch.input_ids, forward_batch.out_cache_loc])
    dist.broadcast(payload, src=0, group=tp_group().group)


def send_stop() -> None:
    """Rank 0: tell the other ranks to leave their loop."""
    _broadcast_header(None)


def receive_plan(table: ReqToTokenPool, device: torch.device) -> ForwardBatch | None:
    """Other ranks: wait for rank 0's next plan, apply its table writes and return its batch;
    None when rank 0 stops."""
    plan = _broadcast_header(None)
    if plan is None:
        return None
    for row, start, slots in plan.table_writes:
        table.write(row, start, torch.tensor(slots, dtype=torch.int64, device=device))
    t = plan.num_tokens
    payload = torch.empty(2 * t, dtype=torch.int64, device=device)
    dist.broadcast(payload, src=0, group=tp_group().group)
    return ForwardBatch.build(plan.mode, payload[:t], plan.req_pool_indices, plan.prefix_lens,
                              plan.extend_lens, payload[t:], device, plan.return_all_logits)
