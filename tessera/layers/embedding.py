"""Token embedding and LM head, sharded over the vocabulary across TP ranks.

Each rank holds `shard_size` consecutive rows of the table (the last rank's tail zero-padded).
The embedding looks up the ids of its own shard (others read as zero rows) and the ranks' rows
are summed (all-reduce); the LM head computes its shard's logits and the shards are gathered.
At TP size 1 both are the plain lookup and GEMM.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.distributed import (
    get_tp_rank,
    get_tp_size,
    tensor_parallel_all_gather,
    tensor_parallel_all_reduce,
)
from tessera.layers.checkpoint_slice import reads_checkpoint_slices
from tessera.layers.custom_op import MultiPlatformOp
from tessera.layers.linear import default_weight_loader
from tessera.layers.quantization import set_weight_loader
from tessera.ops import custom_ops  # noqa: F401  (registers tessera::embedding)
from tessera.ops.linear import linear


class EmbeddingLookup(MultiPlatformOp):
    """weight[ids]: the rows of an embedding table for a tensor of token ids.

    Fast path: `tessera::embedding` (Triton, one program per id and column block) on CUDA, and on
    MUSA through Triton; F.embedding elsewhere. The fast path reads nothing for an id outside the
    table (a zero row) where F.embedding raises: ids are checked where they enter the engine.
    """

    def __init__(self, *, force_native: bool = False) -> None:
        super().__init__(force_native)

    def forward_native(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, weight)

    def forward_cuda(self, ids: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        rows = torch.ops.tessera.embedding(ids.reshape(-1), weight)
        return rows.view(*ids.shape, weight.shape[1])


class VocabParallelEmbedding(nn.Module):
    """Embedding table sharded over the vocab dim (the whole table when tp_size == 1)."""

    def __init__(self, vocab_size: int, hidden_size: int,
                 dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        self.vocab_size = vocab_size
        self.shard_size = (vocab_size + self.tp_size - 1) // self.tp_size
        self.vocab_start = self.tp_rank * self.shard_size
        self.weight = set_weight_loader(
            nn.Parameter(torch.empty(self.shard_size, hidden_size, dtype=dtype),
                         requires_grad=False), self.weight_loader)
        self.lookup = EmbeddingLookup()

    @reads_checkpoint_slices
    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        shard = loaded[self.vocab_start:self.vocab_start + self.shard_size]
        if shard.shape[0] < self.shard_size:  # last rank: pad the tail with zeros
            param.data.zero_()
            param.data[: shard.shape[0]].copy_(shard)
            return
        default_weight_loader(param, shard)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return self.lookup(input_ids, self.weight)
        local = input_ids - self.vocab_start
        mine = (local >= 0) & (local < self.shard_size)
        rows = self.lookup(torch.where(mine, local, 0), self.weight)
        return tensor_parallel_all_reduce(rows * mine.unsqueeze(-1).to(rows.dtype))


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection to vocab logits; shares its weight with the embedding when tied."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = linear(hidden, self.weight)  # the GEMV for one row on CUDA
        logits = tensor_parallel_all_gather(logits, dim=-1)
        return logits[..., : self.vocab_size]


__all__ = ["EmbeddingLookup", "ParallelLMHead", "VocabParallelEmbedding"]
