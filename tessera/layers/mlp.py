"""GatedMLP: down(act(gate(x)) * up(x)) with gate and up as one merged column-parallel GEMM."""
from __future__ import annotations

import torch
from torch import nn

from tessera.layers.activation import SiluAndMul
from tessera.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from tessera.layers.quantization import QuantMethod


class GatedMLP(nn.Module):
    """The SwiGLU MLP of Llama-style models (and the dense layers / shared experts of MoE ones).

    Parameter names (`gate_up_proj`, `down_proj`) are the ones checkpoints map onto through a
    model's packed_modules_mapping (gate_proj -> shard 0, up_proj -> shard 1)."""

    def __init__(self, hidden_size: int, intermediate_size: int, dtype: torch.dtype,
                 quant_method: QuantMethod | None = None, reduce_results: bool = True) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(
            hidden_size, [intermediate_size, intermediate_size], dtype=dtype,
            quant_method=quant_method)
        # reduce_results=False: under TP the output is this rank's partial sum (see
        # RowParallelLinear), for an owner that adds more before one all-reduce
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, dtype=dtype,
                                           quant_method=quant_method,
                                           reduce_results=reduce_results)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.gate_up_proj(x))

    def down(self, gate_up: torch.Tensor) -> torch.Tensor:
        """down_proj(silu(gate) * up): one GEMV kernel for a bs=1 decode row on CUDA."""
        return self.down_proj.forward_silu_mul(gate_up, self.act_fn)

    def forward_norm(self, x: torch.Tensor, residual: torch.Tensor | None,
                     norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(self(norm(x + residual)), x + residual): the norm fused into gate_up where it can."""
        gate_up, residual = self.gate_up_proj.forward_norm(x, residual, norm)
        return self.down(gate_up), residual
