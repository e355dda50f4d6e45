"""Linear layers: shapes, tensor-parallel sharding and checkpoint loading around a QuantMethod.

Column-parallel layers split the output dim across TP ranks, row-parallel the input dim (and
all-reduce their output across the group when it has more than one rank). Merged layers (QKV,
gate/up) hold several checkpoint tensors side by side; `shard_id` says which. The weight format
and the computation are the layer's QuantMethod (tessera.layers.quantization).

Two methods fuse the step before the layer into it where a kernel exists for that (the one-row
GEMV on CUDA, whose input stage does the norm or the activation): `forward_norm` (RMSNorm with the
residual add, then this layer) and `forward_silu_mul` (SiLU·mul, then this layer). Elsewhere they
are exactly the two modules called one after the other.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from tessera.distributed import get_tp_rank, get_tp_size, tensor_parallel_all_reduce
from tessera.layers.checkpoint_slice import (
    CheckpointSlice,
    materialize,
    reads_checkpoint_slices,
)
from tessera.layers.quantization import QuantMethod, set_weight_loader
from tessera.layers.quantization.base import default_linear_method

if TYPE_CHECKING:
    from tessera.layers.activation import SiluAndMul
    from tessera.layers.layernorm import RMSNorm


def default_weight_loader(param: nn.Parameter | torch.Tensor,
                          loaded: torch.Tensor | CheckpointSlice) -> None:
    loaded = materialize(loaded)
    if param.shape != loaded.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint "
                         f"{tuple(loaded.shape)}")
    if param.dtype == torch.float8_e4m3fn and loaded.dtype != param.dtype:
        # a cast would silently drop the tensor's block scales
        raise ValueError(f"an FP8 parameter got a {loaded.dtype} checkpoint tensor: the "
                         f"checkpoint's weights are not in the format its quantization_config "
                         f"declares")
    param.data.copy_(loaded)


def load_shard(param: torch.Tensor, loaded: torch.Tensor | CheckpointSlice, dim: int,
               param_start: int, size: int, loaded_start: int,
               block: tuple[int, ...] | None = None,
               checkpoint_block: tuple[int, ...] | None = None) -> None:
    """Copies `size` rows (along `dim`) of the checkpoint tensor from `loaded_start` into the
    parameter from `param_start`. Offsets are in weight elements. For a block-scale tensor
    (`block`: weight elements per scale entry along each dim, e.g. weight_scale_inv's
    [128, 128]) they are turned into scale entries: every offset must fall on a block, and a
    size may end inside one only where the checkpoint tensor ends. A checkpoint whose blocks
    are coarser (`checkpoint_block`, a multiple of `block`) has each scale repeated over the
    finer entries first."""
    if block is not None:
        b = block[dim]
        if checkpoint_block is not None and checkpoint_block[dim] != b:
            loaded = materialize(loaded).repeat_interleave(checkpoint_block[dim] // b, dim=dim)
        if param_start % b or loaded_start % b:
            raise ValueError(
                f"block-quantized weight: a shard at checkpoint offset {loaded_start} "
                f"(parameter offset {param_start}) along dim {dim} does not start on a {b}-row "
                f"scale block; this layer's split (tensor parallel size) must be a multiple of "
                f"{b} there")
        entries = -(-size // b)
        if size % b and loaded_start // b + entries < loaded.shape[dim]:
            raise ValueError(
                f"block-quantized weight: a shard of {size} rows at checkpoint offset "
                f"{loaded_start} ends inside a {b}-row scale block; the tensor parallel split "
                f"must be a multiple of {b}")
        param_start, size, loaded_start = param_start // b, entries, loaded_start // b
    default_weight_loader(param.narrow(dim, param_start, size),
                          loaded.narrow(dim, loaded_start, size))


def _block(param: torch.Tensor) -> dict:
    """A block-scale parameter's granularity and its checkpoint's (set by its QuantMethod);
    nothing for other parameters."""
    return {"block": getattr(param, "block_shape", None),
            "checkpoint_block": getattr(param, "checkpoint_block", None)}


class LinearBase(nn.Module):
    """y = x W^T (+ b) for one rank's [out_features, in_features] shard."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype,
                 quant_method: QuantMethod | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.params_dtype = dtype
        self.quant_method = quant_method or default_linear_method()
        self.quant_method.create_weights(self, in_features, out_features, dtype,
                                         self.weight_loader)
        self.bias = None
        if bias:
            self.bias = set_weight_loader(
                nn.Parameter(torch.empty(out_features, dtype=dtype), requires_grad=False),
                self.weight_loader)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.quant_method.apply(self, x, self.bias)

    def set_quant_method(self, method: QuantMethod) -> None:
        """Another weight format, before any weight is loaded: the old method's parameters
        and ops go (the bias stays)."""
        for name in [n for n in self._parameters if n != "bias"]:
            del self._parameters[name]
        self._modules.clear()  # a method's op modules (a linear layer has no others)
        self.quant_method = method
        method.create_weights(self, self.in_features, self.out_features, self.params_dtype,
                              self.weight_loader)

    def forward_norm(self, x: torch.Tensor, residual: torch.Tensor | None,
                     norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(norm(x + residual)), x + residual); without a residual (self(norm(x)), x)."""
        return self.quant_method.apply_norm(self, x, residual, norm)

    def forward_silu_mul(self, gate_up: torch.Tensor, act: SiluAndMul) -> torch.Tensor:
        """self(act(gate_up)), act = SiLU·mul over the [gate | up] halves."""
        return self.quant_method.apply_silu_mul(self, gate_up, act)

    @reads_checkpoint_slices
    def weight_loader(self, param: nn.Parameter, loaded: torch.Tensor, shard_id=None) -> None:
        default_weight_loader(param, loaded)

    def checkpoint_parts(self, full: torch.Tensor) -> list[tuple[str | int | None, torch.Tensor]]:
        """The checkpoint tensors (shard id, tensor) that this UNSHARDED layer's parameter
        `full` is made of: how dummy weights give a TP rank exactly its shard of the TP=1
        model (tessera.models.loader.init_dummy_weights). One tensor, no shard id, here."""
        return [(None, full)]


class ReplicatedLinear(LinearBase):
    """The whole weight on every rank."""


class ColumnParallelLinear(LinearBase):
    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32,
                 quant_method: QuantMethod | None = None) -> None:
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        if out_features % self.tp_size:
            raise ValueError(f"output dim {out_features} does not divide by tp size "
                             f"{self.tp_size}")
        super().__init__(in_features, out_features // self.tp_size, bias, dtype, quant_method)

    @reads_checkpoint_slices
    def weight_loader(self, param, loaded, shard_id=None) -> None:
        size = self.out_features
        load_shard(param.data, loaded, 0, 0, size, self.tp_rank * size, **_block(param))


class RowParallelLinear(LinearBase):
    """Input dim sharded; the partial outputs are summed across the TP group (all-reduce), and
    the bias added once, after the sum. `reduce_results=False` leaves the sum to the caller,
    which adds more partial sums before one all-reduce (an MoE layer's shared experts)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False,
                 dtype: torch.dtype = torch.float32,
                 quant_method: QuantMethod | None = None, reduce_results: bool = True) -> None:
        assert reduce_results or not bias, "a bias must be added after the sum, by its owner"
        self.reduce_results = reduce_results
        self.tp_size, self.tp_rank = get_tp_size(), get_tp_rank()
        if in_features % self.tp_size:
            raise ValueError(f"input dim {in_features} does not divide by tp size "
                             f"{self.tp_size}")
        super().__init__(in_features // self.tp_size, out_features, bias, dtype, quant_method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1 or not self.reduce_results:
            return self.quant_method.apply(self, x, self.bias)
        return self._reduce(self.quant_method.apply(self, x))

    def forward_silu_mul(self, gate_up: torch.Tensor, act: SiluAndMul) -> torch.Tensor:
        if self.tp_size == 1 or not self.reduce_results:
            return self.quant_method.apply_silu_mul(self, gate_up, act)
        return self._reduce(self.quant_method.apply(self, act(gate_up)))

    def _reduce(self, partial: torch.Tensor) -> torch.Tensor:
        out = tensor_parallel_all_reduce(partial)
        return out if self.bias is None else out + self.bias

    @reads_checkpoint_slices
    def weight_loader(self, param, loaded, shard_id=None) -> None:
        if param.dim() == 1:  # the bias: whole on every rank, added after the sum
            default_weight_loader(param, loaded)
            return
        size = self.in_features
        load_shard(param.data, loaded, 1, 0, size, self.tp_rank * size, **_block(param))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs concatenated (e.g. gate_proj and up_proj); shard_id is
    the index of the one being loaded."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False,
                 dtype: torch.dtype = torch.float32,
                 quant_method: QuantMethod | None = None) -> None:
        self.output_sizes = output_sizes
        super().__init__(in_features, sum(output_sizes), bias, dtype, quant_method)

    def checkpoint_parts(self, full):
        return list(enumerate(full.split(self.output_sizes, dim=0)))

    @reads_checkpoint_slices
    def weight_loader(self, param, loaded, shard_id=None) -> None:
        assert shard_id is not None, "merged layers load one checkpoint tensor at a time"
        size = self.output_sizes[shard_id] // self.tp_size
        offset = sum(self.output_sizes[:shard_id]) // self.tp_size
        load_shard(param.data, loaded, 0, offset, size, self.tp_rank * size, **_block(param))


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections in one matmul; shard_id in {"q", "k", "v"}. KV heads are replicated
    when there are fewer of them than ranks (each rank keeps the one its query heads read)."""

    def __init__(self, hidden_size: int, head_dim: int, num_heads: int, num_kv_heads: int,
                 bias: bool = False, dtype: torch.dtype = torch.float32,
                 quant_method: QuantMethod | None = None) -> None:
        tp = get_tp_size()
        if num_heads % tp:
            raise ValueError(f"{num_heads} attention heads do not divide by tp size {tp}")
        if num_kv_heads % tp and tp % num_kv_heads:
            raise ValueError(f"{num_kv_heads} KV heads and tp size {tp}: one must divide the "
                             f"other")
        self.head_dim = head_dim
        self.num_heads = num_heads // tp
        self.num_kv_heads = max(1, num_kv_heads // tp)
        self.kv_replicas = max(1, tp // num_kv_heads)
        out = (self.num_heads + 2 * self.num_kv_heads) * head_dim * tp
        super().__init__(hidden_size, out, bias, dtype, quant_method)

    def checkpoint_parts(self, full):
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        return list(zip("qkv", full.split([q_size, kv_size, kv_size], dim=0)))

    @reads_checkpoint_slices
    def weight_loader(self, param, loaded, shard_id=None) -> None:
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        offset, size, rank = {
            "q": (0, q_size, self.tp_rank),
            "k": (q_size, kv_size, self.tp_rank // self.kv_replicas),
            "v": (q_size + kv_size, kv_size, self.tp_rank // self.kv_replicas),
        }[shard_id]
        load_shard(param.data, loaded, 0, offset, size, rank * size, **_block(param))
