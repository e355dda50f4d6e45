from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.ops import custom_ops  # noqa: F401  (custom_ops registers tessera::*)
from tessera.ops.base import MultiPlatformOp


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


__all__ = ["EmbeddingLookup"]
