from __future__ import annotations

import torch
from torch import nn

from tessera.distributed import get_tp_rank, get_tp_size
from tessera.layers.linear import default_weight_loader
from tessera.ops.embedding import EmbeddingLookup
from tessera.ops.linear import linear


class VocabParallelEmbedding(nn.Module):
    """Embedding table sharded over the vocab dim (whole table when tp_size == 1)."""

    def __init__(self, vocab_size: int, hidden_size: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        self.vocab_size = vocab_size
        self.shard_size = (vocab_size + self.tp_size - 1) // self.tp_size
        self.vocab_start = self.tp_rank * self.shard_size
        self.weight = nn.Parameter(torch.empty(self.shard_size, hidden_size, dtype=dtype),
                                   requires_grad=False)
        self.weight.weight_loader = self.weight_loader
        self.lookup = EmbeddingLookup()

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
        raise NotImplementedError("vocab-parallel embedding needs the TP communication ops")


class ParallelLMHead(VocabParallelEmbedding):
    """Output projection to vocab logits; shares its weight with the embedding when tied."""

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = linear(hidden, self.weight)  # the GEMV for one row on CUDA
        return logits[..., : self.vocab_size]
