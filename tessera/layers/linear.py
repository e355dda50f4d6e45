"""Linear layers that know how to load their shard of a checkpoint tensor (weight_loader).

Column-parallel layers split the output dim across TP ranks, row-parallel the input dim. Merged
layers (QKV, gate/up) hold several checkpoint tensors side by side; `shard_id` says which.
"""
from __future__ import annotations

import torch
from torch import nn

from tessera.distributed import get_tp_rank, get_tp_size
from tessera.ops.linear import linear


def _set_loader(param: nn.Parameter, loader) -> nn.Parameter:
    param.weight_loader = loader
    return param


def default_weight_loader(param: nn.Parameter, loaded: torch.Tensor) -> None:
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint "
                         f"{tuple(loaded.shape)}")
    param.data.copy_(loaded)


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _set_loader(nn.Parameter(torch.empty(out_features, in_features, dtype=dtype),
                                               requires_grad=False), self.weight_loader)
        self.bias = None
        if bias:
            self.bias = _set_loader(nn.Parameter(torch.empty(out_features, dtype=dtype),
                                                 requires_grad=False), self.weight_loader)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # F.linear, except few-row CUDA inputs take our Triton kernels (tessera.ops.linear)
        return linear(x, self.weight, self.bias)

    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded)


class ColumnParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        assert out_features % self.tp_size == 0, "output dim must divide by tp size"
        super().__init__(in_features, out_features // self.tp_size, bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None) -> None:
        size = param.shape[0]
        default_weight_loader(param, loaded.narrow(0, self.tp_rank * size, size))


class RowParallelLinear(LinearBase):
    """Input dim sharded; the caller all-reduces the output when tp_size > 1."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        assert in_features % self.tp_size == 0, "input dim must divide by tp size"
        super().__init__(in_features // self.tp_size, out_features, bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None) -> None:
        if param.dim() == 1:  # bias is added once, on every rank's full output
            default_weight_loader(param, loaded)
            return
        size = param.shape[1]
        default_weight_loader(param, loaded.narrow(1, self.tp_rank * size, size))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs concatenated (e.g. gate_proj and up_proj); shard_id = index."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False,
                 dtype: torch.dtype = torch.float32) -> None:
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None) -> None:
        assert shard_id is not None, "merged layers load one checkpoint tensor at a time"
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        shard = loaded.narrow(0, self.tp_rank * size, size)
        default_weight_loader(param.data.narrow(0, offset, size), shard)


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; shard_id in {"q", "k", "v"}."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, dtype: torch.dtype = torch.float32) -> None:
        tp = get_tp_size()
        self.head_dim = head_dim
        self.num_heads = num_heads // tp
        # KV heads are replicated when there are fewer of them than ranks
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias, dtype)

    def weight_loader(self, param, loaded, shard_id=None) -> None:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        offset, size, rank = {
            "q": (0, q_size, self.tp_rank),
            "k": (q_size, kv_size, self.tp_rank // self.kv_replicas),
            "v": (q_size + kv_size, kv_size, self.tp_rank // self.kv_replicas),
        }[shard_id]
        default_weight_loader(param.data.narrow(0, offset, size), loaded.narrow(0, rank * size, size))
