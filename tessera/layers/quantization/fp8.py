"""Block FP8 (W8A8): weights in float8_e4m3fn with one float32 scale per [bn, bk] block,
activations quantized per token in groups of bk when a layer runs.

Checkpoint format (HF `quantization_config: {"quant_method": "fp8", "weight_block_size":
[128, 128], "activation_scheme": "dynamic"}`, as DeepSeek-V3 and the Qwen3 FP8 releases ship):
each quantized linear layer has `weight` [N, K] float8_e4m3fn and `weight_scale_inv`
[ceil(N / bn), ceil(K / bk)] float32, and W[n, k] = weight[n, k] * weight_scale_inv[n // bn,
k // bk] (dequantized = fp8 times the scale of its block). Per-expert tensors of MoE blocks have
the same pair. Embeddings, the LM head, norms and the MoE router are not quantized.

* `Fp8LinearMethod`: `weight` + `weight_scale_inv` on the layer; `apply` quantizes x per token
  group (bk wide) and runs the block-scaled GEMM (`BlockFP8Linear`: Triton on CUDA/MUSA, the
  torch reference on CPU). The layer's TP loaders shard the scales in whole blocks; a merged
  part or TP shard that starts inside a block gets finer scale rows (_row_granularity), an
  input dim off the grid zero-padded activation groups, and a TP split of the input dim inside
  a block a clear error at load time.
* `Fp8MoEMethod`: the same for a FusedMoE's stacked experts: `w13_weight` [E, 2I, H] /
  `w2_weight` [E, H, I] fp8 with `w13_weight_scale_inv` [E, 2I/bn, H/bk] /
  `w2_weight_scale_inv` [E, H/bn, I/bk] (tessera.ops.triton.fused_moe_fp8).
* `--quantization fp8` on an unquantized checkpoint (online quantization): the layers hold the
  checkpoint's weights in the model dtype while loading, and `process_weights_after_loading`
  quantizes them to 128x128 blocks (the format above, so the same kernels run; one scale per
  128x128 block rather than per output channel keeps a single FP8 GEMM for both cases).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
from torch import nn

from tessera.layers.quantization.base import (
    MoEMethod,
    QuantConfig,
    QuantMethod,
    UnquantizedLinearMethod,
    set_weight_loader,
)
from tessera.layers.quantization.fp8_quant import BlockFP8Linear, Fp8MoEExperts
from tessera.layers.quantization.moe_methods import UnquantizedMoEMethod, add_expert_param
from tessera.ops.fp8_reference import FP8_DTYPE, dequantize_block_fp8, quantize_block_fp8

DEFAULT_BLOCK = (128, 128)


@dataclasses.dataclass(frozen=True)
class Fp8Config(QuantConfig):
    """block: [bn, bk] elements per weight scale (HF weight_block_size). checkpoint_is_fp8:
    the checkpoint stores fp8 weights + weight_scale_inv (False: `--quantization fp8`
    quantizes a 16/32-bit checkpoint while loading). modules_to_not_convert: checkpoint module
    names (or name fragments) left unquantized."""

    block: tuple[int, int] = DEFAULT_BLOCK
    checkpoint_is_fp8: bool = True
    modules_to_not_convert: tuple[str, ...] = ()
    name: str = "fp8"

    @classmethod
    def from_hf(cls, qc: dict[str, Any]) -> Fp8Config:
        """From a config.json `quantization_config`; unsupported variants are refused."""
        method = qc.get("quant_method")
        if method != "fp8":
            raise ValueError(f"quantization_config quant_method {method!r} is not supported "
                             f"(tessera reads 'fp8' with weight_block_size)")
        block = qc.get("weight_block_size")
        if block is None:
            raise ValueError("quantization_config is per-tensor FP8 (no weight_block_size); "
                             "tessera supports block FP8 only, e.g. weight_block_size "
                             "[128, 128]")
        if len(block) != 2 or any(int(b) not in (64, 128, 256) for b in block):
            raise ValueError(f"quantization_config weight_block_size {block}: tessera's kernels "
                             f"take two block sizes from 64, 128, 256")
        scheme = qc.get("activation_scheme", "dynamic")
        if scheme != "dynamic":
            raise ValueError(f"quantization_config activation_scheme {scheme!r}: only "
                             f"'dynamic' (per-token-group scales computed at run time) is "
                             f"supported")
        fmt = qc.get("fmt", "e4m3")
        if fmt != "e4m3":
            raise ValueError(f"quantization_config fmt {fmt!r}: only e4m3 weights are supported")
        return cls(block=(int(block[0]), int(block[1])),
                   modules_to_not_convert=tuple(qc.get("modules_to_not_convert") or ()))

    def linear_method(self) -> QuantMethod:
        return Fp8LinearMethod(self)

    def moe_method(self) -> MoEMethod:
        return Fp8MoEMethod(self)


def _scale_param(shape: tuple[int, ...], block: tuple[int, int], loader) -> nn.Parameter:
    param = nn.Parameter(torch.empty(shape, dtype=torch.float32), requires_grad=False)
    param.block_shape = block  # the loaders shard it in whole blocks
    return set_weight_loader(param, loader)


def _blocks(n: int, b: int) -> int:
    return -(-n // b)


def _replace(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(layer, name)
    param = nn.Parameter(value, requires_grad=False)
    param.__dict__.update({k: v for k, v in old.__dict__.items() if k != "data"})
    setattr(layer, name, param)


def _row_granularity(layer: nn.Module, out_features: int, block_n: int) -> int:
    """Weight rows per scale row in this layer. The checkpoint's block_n, unless a part of a
    merged layer (gate/up, q/k/v) or a TP shard starts inside a block: then the largest
    divisor of block_n that every boundary falls on, each checkpoint scale repeated over its
    finer rows (DeepSeek-V2-Lite's 10944-row gate and up: 64 rows per scale)."""
    tp = getattr(layer, "tp_size", 1)
    parts = [size // tp for size in getattr(layer, "output_sizes", [])]
    if hasattr(layer, "num_kv_heads"):  # QKV: this rank's q and kv widths
        parts = [layer.num_heads * layer.head_dim, layer.num_kv_heads * layer.head_dim]
    if tp > 1:
        parts.append(out_features)
    return math.gcd(block_n, *parts)


class Fp8LinearMethod(QuantMethod):
    """Block-FP8 weights of a linear layer (module docstring). `layer.weight_block` is the
    layer's [rows, cols] per scale entry: the checkpoint's block, with fewer rows where merged
    parts or TP shards need them (_row_granularity). An input dim that is not a multiple of
    bk (DeepSeek-V2-Lite's 10944-wide down_proj) is zero-padded to whole activation groups
    when the layer runs."""

    def __init__(self, config: Fp8Config) -> None:
        self.config = config

    def create_weights(self, layer, in_features, out_features, dtype, weight_loader) -> None:
        bn, bk = self.config.block
        if not self.config.checkpoint_is_fp8:  # quantized after loading, whole: plain blocks
            layer.weight_block = self.config.block
            layer.fp8_linear = BlockFP8Linear(layer.weight_block)
            UnquantizedLinearMethod().create_weights(layer, in_features, out_features, dtype,
                                                     weight_loader)
            return
        layer.weight_block = (_row_granularity(layer, out_features, bn), bk)
        layer.fp8_linear = BlockFP8Linear(layer.weight_block)
        weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE),
                              requires_grad=False)
        layer.register_parameter("weight", set_weight_loader(weight, weight_loader))
        scale = _scale_param((_blocks(out_features, layer.weight_block[0]),
                              _blocks(in_features, bk)), layer.weight_block, weight_loader)
        scale.checkpoint_block = self.config.block
        layer.register_parameter("weight_scale_inv", scale)

    def process_weights_after_loading(self, layer) -> None:
        if layer.weight.dtype == FP8_DTYPE:
            return
        weight, scale_inv = quantize_block_fp8(layer.weight.data, layer.weight_block)
        _replace(layer, "weight", weight)
        layer.register_parameter("weight_scale_inv", _scale_param(
            tuple(scale_inv.shape), layer.weight_block, layer.weight.weight_loader))
        layer.weight_scale_inv.data.copy_(scale_inv)

    def apply(self, layer, x, bias=None) -> torch.Tensor:
        return layer.fp8_linear(x, layer.weight, layer.weight_scale_inv, bias)

    def dense_weight(self, layer, dtype) -> torch.Tensor:
        if layer.weight.dtype != FP8_DTYPE:  # online quantization, not yet quantized
            return layer.weight.to(dtype)
        return dequantize_block_fp8(layer.weight, layer.weight_scale_inv, layer.weight_block,
                                    dtype)


class Fp8MoEMethod(MoEMethod):
    """Block-FP8 stacked expert weights of a FusedMoE (module docstring)."""

    def __init__(self, config: Fp8Config) -> None:
        self.config = config

    def create_weights(self, layer, num_experts, intermediate, hidden, dtype,
                       weight_loader) -> None:
        bn, bk = self.config.block
        if intermediate % bn or intermediate % bk or hidden % bk or hidden % bn:
            raise ValueError(f"block FP8 experts: this rank's expert intermediate size "
                             f"{intermediate} and the hidden size {hidden} must be multiples "
                             f"of the [{bn}, {bk}] blocks")
        if not self.config.checkpoint_is_fp8:
            # the unquantized weights while loading; quantized in process_weights_after_loading
            UnquantizedMoEMethod().create_weights(layer, num_experts, intermediate, hidden,
                                                  dtype, weight_loader)
            layer.expert_op = Fp8MoEExperts(self.config.block)
            return
        add_expert_param(layer, "w13_weight", (num_experts, 2 * intermediate, hidden),
                         FP8_DTYPE, weight_loader)
        add_expert_param(layer, "w2_weight", (num_experts, hidden, intermediate), FP8_DTYPE,
                         weight_loader)
        add_expert_param(layer, "w13_weight_scale_inv",
                         (num_experts, 2 * intermediate // bn, hidden // bk), torch.float32,
                         weight_loader, self.config.block)
        add_expert_param(layer, "w2_weight_scale_inv",
                         (num_experts, hidden // bn, intermediate // bk), torch.float32,
                         weight_loader, self.config.block)
        layer.expert_op = Fp8MoEExperts(self.config.block)

    def process_weights_after_loading(self, layer) -> None:
        if layer.w13_weight.dtype == FP8_DTYPE:
            return
        for name in ("w13_weight", "w2_weight"):
            weight, scale_inv = quantize_block_fp8(getattr(layer, name).data, self.config.block)
            _replace(layer, name, weight)
            add_expert_param(layer, f"{name}_scale_inv", tuple(scale_inv.shape), torch.float32,
                             getattr(layer, name).weight_loader, self.config.block)
            getattr(layer, f"{name}_scale_inv").data.copy_(scale_inv)

    def apply(self, layer, x, topk_weights, topk_ids) -> torch.Tensor:
        return layer.expert_op(x, layer.w13_weight, layer.w2_weight, layer.w13_weight_scale_inv,
                               layer.w2_weight_scale_inv, topk_weights, topk_ids)


# --quantization values (besides "none") -> the config they make for an unquantized checkpoint
ONLINE_QUANTIZATION = {"fp8": Fp8Config(checkpoint_is_fp8=False)}
# config.json quantization_config quant_method -> its parser
CHECKPOINT_QUANTIZATION = {"fp8": Fp8Config.from_hf}


def resolve_quant_config(hf_config: dict[str, Any], flag: str | None) -> QuantConfig | None:
    """The model's quantization from its config.json and `--quantization` (None: follow the
    checkpoint; "none": unquantized; "fp8": the checkpoint's FP8 or, for an unquantized
    checkpoint, FP8 quantized while loading). Conflicts are errors that say what to change."""
    qc = hf_config.get("quantization_config")
    method = qc.get("quant_method") if isinstance(qc, dict) else None
    if flag not in (None, "none", *ONLINE_QUANTIZATION):
        raise ValueError(f"--quantization {flag!r}: choose none or one of "
                         f"{sorted(ONLINE_QUANTIZATION)}")
    if method is None:
        return ONLINE_QUANTIZATION.get(flag) if flag else None
    if flag == "none":
        raise ValueError(f"--quantization none: the checkpoint is quantized ({method}); drop "
                         f"the flag (or pass --quantization {method})")
    if flag is not None and flag != method:
        raise ValueError(f"--quantization {flag} conflicts with the checkpoint's "
                         f"quantization_config ({method}); drop the flag")
    if method not in CHECKPOINT_QUANTIZATION:
        raise ValueError(f"checkpoint quantization {method!r} is not supported (supported: "
                         f"{sorted(CHECKPOINT_QUANTIZATION)})")
    return CHECKPOINT_QUANTIZATION[method](qc)


__all__ = ["DEFAULT_BLOCK", "Fp8Config", "Fp8LinearMethod", "Fp8MoEMethod",
           "resolve_quant_config"]
