"""QuantMethod: how a linear layer stores its weight and computes with it.

A linear layer (tessera.layers.linear) owns its shapes, its sharding and its checkpoint loading;
its QuantMethod decides the weight format: which parameters exist (`create_weights`), how the
layer's output is computed from them (`apply`), and what to do once the checkpoint is loaded
(`process_weights_after_loading`: repacking, requantizing). A quantization scheme is one class.

The few-row fusions of the decode path (one GEMV kernel whose input stage is the RMSNorm or the
SiLU·mul before the layer: tessera.ops.triton.gemv) read the plain weight, so they are methods of
the method too: `apply_norm` / `apply_silu_mul` default to the two steps one after the other.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

from tessera.ops.linear import linear, use_gemv

if TYPE_CHECKING:
    from tessera.layers.activation import SiluAndMul
    from tessera.layers.layernorm import RMSNorm

WeightLoader = Callable[..., None]


def set_weight_loader(param: nn.Parameter, loader: WeightLoader) -> nn.Parameter:
    """Each parameter carries the function that copies its shard of a checkpoint tensor."""
    param.weight_loader = loader
    return param


class QuantMethod(ABC):
    @abstractmethod
    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       dtype: torch.dtype, weight_loader: WeightLoader) -> None:
        """Registers the layer's weight parameters for a [out_features, in_features] shard."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor,
              bias: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, in] -> [T, out] (+ bias)."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once after every checkpoint tensor is loaded (no-op by default)."""

    def dense_weight(self, layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
        """The layer's weight [out, in] as a plain `dtype` tensor, for models that split or
        fold a projection's weight after loading (DeepSeek's kv_b_proj); the format's own
        decoding (block FP8: fp8 * scale_inv) where it has one."""
        return layer.weight.to(dtype)

    def apply_norm(self, layer: nn.Module, x: torch.Tensor, residual: torch.Tensor | None,
                   norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """(apply(norm(x + residual)), x + residual); without a residual, (apply(norm(x)), x)."""
        if residual is None:
            return self.apply(layer, norm(x), layer.bias), x
        normed, residual = norm(x, residual)
        return self.apply(layer, normed, layer.bias), residual

    def apply_silu_mul(self, layer: nn.Module, gate_up: torch.Tensor,
                       act: SiluAndMul) -> torch.Tensor:
        """apply(act(gate_up)), act = SiLU·mul over the [gate | up] halves."""
        return self.apply(layer, act(gate_up), layer.bias)


class UnquantizedLinearMethod(QuantMethod):
    """One weight [out, in] in the model's dtype. `apply` is tessera.ops.linear.linear: F.linear,
    or tessera's few-row Triton kernels where they were measured faster (one row: the GEMV)."""

    def create_weights(self, layer, in_features, out_features, dtype, weight_loader) -> None:
        weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype),
                              requires_grad=False)
        layer.register_parameter("weight", set_weight_loader(weight, weight_loader))

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        return linear(x, layer.weight, bias)

    def apply_norm(self, layer, x, residual, norm):
        # one kernel (tessera::gemv_rms_norm) when the layer would run the GEMV on x and the
        # norm is bound to its Triton path
        if (use_gemv(x, layer.weight, layer.bias) and norm.bound_forward == "forward_cuda"
                and norm.weight.dtype == x.dtype
                and (residual is None or (residual.shape == x.shape
                                          and residual.dtype == x.dtype
                                          and residual.is_contiguous()))):
            return torch.ops.tessera.gemv_rms_norm(x, residual, norm.weight,
                                                   norm.variance_epsilon, layer.weight,
                                                   layer.bias)
        return super().apply_norm(layer, x, residual, norm)

    def apply_silu_mul(self, layer, gate_up, act):
        # one kernel (tessera::gemv_silu_mul) when the layer would run the GEMV and act is
        # bound to Triton
        if (use_gemv(gate_up, layer.weight, layer.bias) and act.bound_forward == "forward_cuda"
                and gate_up.shape[-1] == 2 * layer.weight.shape[1]):
            return torch.ops.tessera.gemv_silu_mul(gate_up, layer.weight, layer.bias)
        return super().apply_silu_mul(layer, gate_up, act)


class MoEMethod(ABC):
    """The expert-weight format of a FusedMoE block (tessera.layers.moe): which stacked
    parameters exist and how the routed experts' output is computed from them."""

    @abstractmethod
    def create_weights(self, layer: nn.Module, num_experts: int, intermediate: int, hidden: int,
                       dtype: torch.dtype, weight_loader: WeightLoader) -> None:
        """Registers `w13_weight` [E, 2I, H], `w2_weight` [E, H, I] (+ the format's scales) for
        this rank's intermediate share I."""

    @abstractmethod
    def apply(self, layer: nn.Module, x: torch.Tensor, topk_weights: torch.Tensor,
              topk_ids: torch.Tensor) -> torch.Tensor:
        """The routed experts' output [T, H] (this rank's partial sum under TP)."""

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Called once after every checkpoint tensor is loaded (no-op by default)."""


class QuantConfig(ABC):
    """A model's quantization: which method its linear layers and MoE blocks get. Models never
    see it: the loader builds the model inside `quantization(config)`, and layers built there
    without an explicit method ask `current_quant_config()`."""

    name: str

    @abstractmethod
    def linear_method(self) -> QuantMethod: ...

    @abstractmethod
    def moe_method(self) -> MoEMethod: ...


_current_config: QuantConfig | None = None


@contextlib.contextmanager
def quantization(config: QuantConfig | None) -> Iterator[None]:
    """Layers built inside take their methods from `config` (None: unquantized)."""
    global _current_config
    previous, _current_config = _current_config, config
    try:
        yield
    finally:
        _current_config = previous


def current_quant_config() -> QuantConfig | None:
    return _current_config


def default_linear_method() -> QuantMethod:
    """The method of a linear layer built now without one: the current config's, else
    unquantized."""
    config = _current_config
    return config.linear_method() if config is not None else UnquantizedLinearMethod()
