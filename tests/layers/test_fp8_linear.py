"""Block-FP8 linear layers and MoE experts: the HF quantization_config, loading fp8 weights with
`weight_scale_inv` into every TP layer form (scales sharded in whole blocks), the layer's output
against the dequantized weights, and `--quantization fp8` on unquantized weights."""
from __future__ import annotations

import pytest
import torch

from tessera.distributed import tensor_parallel_as
from tessera.layers.linear import (
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from tessera.layers.moe import FusedMoE
from tessera.layers.moe_router import MoERouting
from tessera.layers.quantization import quantization
from tessera.layers.quantization.fp8 import Fp8Config, resolve_quant_config
from tessera.ops.fp8_gemm import dequantize_block_fp8, quantize_block_fp8
from tessera.ops.fp8_reference import fp8_round_trip
from tessera.ops.moe import fused_moe_fp8_torch

BLOCK = (128, 128)
HF_FP8 = {"quant_method": "fp8", "weight_block_size": [128, 128], "activation_scheme": "dynamic",
          "fmt": "e4m3"}


def _quantized(n: int, k: int, seed: int):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * k ** -0.5
    return quantize_block_fp8(w, BLOCK)


def _expected(x: torch.Tensor, w_q: torch.Tensor, w_s: torch.Tensor) -> torch.Tensor:
    """What a block-FP8 layer computes: x rounded through per-token-group fp8, times the
    dequantized weight."""
    return fp8_round_trip(x, 128) @ dequantize_block_fp8(w_q, w_s, BLOCK).t()


CHECKPOINT_FP8 = Fp8Config()


def _build(cls, *args, tp=(0, 1), config=CHECKPOINT_FP8, **kw):
    with tensor_parallel_as(*tp), quantization(config):
        return cls(*args, **kw)


def test_hf_config_parsed_and_unsupported_variants_refused():
    cfg = Fp8Config.from_hf({**HF_FP8, "modules_to_not_convert": ["lm_head"]})
    assert cfg.block == (128, 128) and cfg.checkpoint_is_fp8
    assert cfg.modules_to_not_convert == ("lm_head",)
    with pytest.raises(ValueError, match="per-tensor"):
        Fp8Config.from_hf({"quant_method": "fp8", "activation_scheme": "dynamic"})
    with pytest.raises(ValueError, match="activation_scheme 'static'"):
        Fp8Config.from_hf({**HF_FP8, "activation_scheme": "static"})
    with pytest.raises(ValueError, match="weight_block_size"):
        Fp8Config.from_hf({**HF_FP8, "weight_block_size": [128, 100]})


def test_quantization_flag_against_the_checkpoint():
    fp8_ckpt = {"quantization_config": HF_FP8}
    assert resolve_quant_config({}, None) is None
    assert resolve_quant_config({}, "none") is None
    online = resolve_quant_config({}, "fp8")
    assert isinstance(online, Fp8Config) and not online.checkpoint_is_fp8
    assert resolve_quant_config(fp8_ckpt, None).checkpoint_is_fp8
    assert resolve_quant_config(fp8_ckpt, "fp8").checkpoint_is_fp8
    with pytest.raises(ValueError, match="--quantization none: the checkpoint is quantized"):
        resolve_quant_config(fp8_ckpt, "none")
    with pytest.raises(ValueError, match="not supported"):
        resolve_quant_config({"quantization_config": {"quant_method": "awq"}}, None)


@pytest.mark.parametrize("tp", [1, 2])
def test_column_and_row_layers_load_block_fp8_shards(tp):
    x = torch.randn(5, 512)
    w_q, w_s = _quantized(768, 512, seed=0)  # 6 x 4 blocks
    expected = _expected(x, w_q, w_s)
    outs = []
    for rank in range(tp):
        layer = _build(ColumnParallelLinear, 512, 768, tp=(rank, tp))
        assert layer.weight.dtype == torch.float8_e4m3fn
        assert layer.weight_scale_inv.shape == (6 // tp, 4)
        layer.weight.weight_loader(layer.weight, w_q)
        layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, w_s)
        outs.append(layer(x))
    torch.testing.assert_close(torch.cat(outs, dim=1), expected, atol=1e-5, rtol=1e-5)

    # row parallel: K split, each rank's partial product summed (the all-reduce)
    partial = torch.zeros(5, 768)
    w_q, w_s = _quantized(768, 512, seed=1)
    for rank in range(tp):
        layer = _build(RowParallelLinear, 512, 768, tp=(rank, tp))
        layer.weight.weight_loader(layer.weight, w_q)
        layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, w_s)
        partial += layer.quant_method.apply(layer, x[:, rank * 512 // tp:(rank + 1) * 512 // tp])
    torch.testing.assert_close(partial, _expected(x, w_q, w_s), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tp", [1, 2])
def test_merged_and_qkv_layers_place_each_part_and_its_scales(tp):
    x = torch.randn(3, 256)
    gate, up = _quantized(512, 256, seed=2), _quantized(512, 256, seed=3)
    # 4 query heads and 2 KV heads of 128
    q, k, v = _quantized(512, 256, seed=4), _quantized(256, 256, seed=5), _quantized(256, 256, 6)
    for rank in range(tp):
        merged = _build(MergedColumnParallelLinear, 256, [512, 512], tp=(rank, tp))
        qkv = _build(QKVParallelLinear, 256, 128, 4, 2, tp=(rank, tp))
        for layer, parts in ((merged, [(0, gate), (1, up)]),
                             (qkv, [("q", q), ("k", k), ("v", v)])):
            for shard_id, (w_q, w_s) in parts:
                layer.weight.weight_loader(layer.weight, w_q, shard_id)
                layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, w_s, shard_id)
        out = merged(x)
        rows = slice(rank * 512 // tp, (rank + 1) * 512 // tp)
        expected = torch.cat([_expected(x, w[rows], s[rows.start // 128:rows.stop // 128])
                              for w, s in (gate, up)], dim=1)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        kv_rows = slice(rank * 256 // tp, (rank + 1) * 256 // tp)
        expected = torch.cat(
            [_expected(x, w[r], s[r.start // 128:r.stop // 128])
             for (w, s), r in ((q, rows), (k, kv_rows), (v, kv_rows))], dim=1)
        torch.testing.assert_close(qkv(x), expected, atol=1e-5, rtol=1e-5)


def test_misaligned_input_shards_are_clear_errors():
    """A row-parallel split inside a K block cannot be served: the ranks' activation groups
    would not be the weight's K blocks."""
    w_q, w_s = _quantized(256, 384, seed=7)
    layer = _build(RowParallelLinear, 384, 256, tp=(1, 2))  # K 192 per rank
    layer.weight.weight_loader(layer.weight, w_q)
    with pytest.raises(ValueError, match="does not start on a 128-row scale block"):
        layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, w_s)
    with pytest.raises(ValueError, match="not in the format"):
        layer.weight.weight_loader(layer.weight, torch.randn(256, 384))


@pytest.mark.parametrize("tp", [1, 2])
def test_merged_parts_inside_a_block_get_finer_scale_rows(tp):
    """gate and up of 192 rows each (DeepSeek-V2-Lite's 10944 in small): up starts inside a
    128-row block, so the layer keeps one scale per 64 rows, each checkpoint scale repeated."""
    x = torch.randn(3, 256)
    gate, up = _quantized(192, 256, seed=10), _quantized(192, 256, seed=11)
    outs = []
    for rank in range(tp):
        layer = _build(MergedColumnParallelLinear, 256, [192, 192], tp=(rank, tp))
        assert layer.weight_block == ((64, 128) if tp == 1 else (32, 128))
        for shard_id, (w_q, w_s) in enumerate((gate, up)):
            layer.weight.weight_loader(layer.weight, w_q, shard_id)
            layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, w_s, shard_id)
        outs.append(layer(x).split(192 // tp, dim=1))
    for part, (w_q, w_s) in enumerate((gate, up)):
        got = torch.cat([out[part] for out in outs], dim=1)
        torch.testing.assert_close(got, _expected(x, w_q, w_s), atol=1e-5, rtol=1e-5)


def test_input_dim_not_a_multiple_of_128_is_padded_to_whole_groups():
    """K 200: the last activation group holds 72 values, as the weight's last K block."""
    x = torch.randn(4, 200)
    w_q, w_s = _quantized(256, 200, seed=12)
    layer = _build(ReplicatedLinear, 200, 256, False, torch.float32)
    layer.weight.weight_loader(layer.weight, w_q)
    layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, w_s)
    padded = torch.nn.functional.pad(x, (0, 56))
    expected = fp8_round_trip(padded, 128)[:, :200] @ dequantize_block_fp8(w_q, w_s, BLOCK).t()
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)


def test_whole_tensor_with_a_partial_last_block_loads():
    """N = 576 (DeepSeek's kv_a_proj): 5 scale rows, the last covering 64 weight rows."""
    x = torch.randn(2, 256)
    w_q, w_s = _quantized(576, 256, seed=8)
    layer = _build(ReplicatedLinear, 256, 576, False, torch.float32)
    layer.weight.weight_loader(layer.weight, w_q)
    layer.weight_scale_inv.weight_loader(layer.weight_scale_inv, w_s)
    torch.testing.assert_close(layer(x), _expected(x, w_q, w_s), atol=1e-5, rtol=1e-5)


def test_online_quantization_of_unquantized_weights():
    x = torch.randn(4, 256)
    w = torch.randn(384, 256) * 256 ** -0.5
    layer = _build(ColumnParallelLinear, 256, 384, True, torch.float32,
                   config=Fp8Config(checkpoint_is_fp8=False))
    assert layer.weight.dtype == torch.float32  # loads the checkpoint as it is
    layer.weight.weight_loader(layer.weight, w)
    layer.bias.weight_loader(layer.bias, torch.randn(384))
    layer.quant_method.process_weights_after_loading(layer)
    assert layer.weight.dtype == torch.float8_e4m3fn and layer.weight_scale_inv.shape == (3, 2)
    w_q, w_s = quantize_block_fp8(w, BLOCK)
    assert torch.equal(layer.weight.float(), w_q.float()) and torch.equal(layer.weight_scale_inv,
                                                                          w_s)
    torch.testing.assert_close(layer(x), _expected(x, w_q, w_s) + layer.bias)
    # and close to the unquantized layer: e4m3 rounding of both operands, a few per cent
    exact = x @ w.t() + layer.bias
    assert (layer(x) - exact).abs().max() < 0.05 * exact.abs().max()


@pytest.mark.parametrize("online", [False, True])
def test_fp8_moe_experts_load_per_expert_tensors(online):
    experts, hidden, inter = 4, 256, 256
    g = torch.Generator().manual_seed(9)
    w13 = torch.randn(experts, 2 * inter, hidden, generator=g) * hidden ** -0.5
    w2 = torch.randn(experts, hidden, inter, generator=g) * inter ** -0.5
    (w13_q, w13_s), (w2_q, w2_s) = quantize_block_fp8(w13, BLOCK), quantize_block_fp8(w2, BLOCK)
    x = torch.randn(6, hidden, generator=g)
    weights, ids = torch.topk(torch.randn(6, experts, generator=g).softmax(-1), 2, dim=-1)
    expected = fused_moe_fp8_torch(x, w13_q, w2_q, w13_s, w2_s, weights, ids, BLOCK)
    tp = 1 if online else 2  # checkpoint FP8 at TP 2: I/tp = 128, one scale block per rank
    total = torch.zeros_like(x)
    for rank in range(tp):
        moe = _build(FusedMoE, hidden, inter, experts, MoERouting(top_k=2), torch.float32,
                     tp=(rank, tp), config=Fp8Config(checkpoint_is_fp8=not online))
        for e in range(experts):
            if online:  # the unquantized checkpoint tensors
                parts = [("w13_weight", w13[e, :inter], 0), ("w13_weight", w13[e, inter:], 1),
                         ("w2_weight", w2[e], None)]
            else:  # gate_proj / up_proj / down_proj .weight and .weight_scale_inv
                parts = [("w13_weight", w13_q[e, :inter], 0), ("w13_weight", w13_q[e, inter:], 1),
                         ("w2_weight", w2_q[e], None),
                         ("w13_weight_scale_inv", w13_s[e, :inter // 128], 0),
                         ("w13_weight_scale_inv", w13_s[e, inter // 128:], 1),
                         ("w2_weight_scale_inv", w2_s[e], None)]
            for name, tensor, shard_id in parts:
                param = getattr(moe, name)
                param.weight_loader(param, tensor, shard_id, expert_id=e)
        moe.quant_method.process_weights_after_loading(moe)
        assert moe.w13_weight.dtype == torch.float8_e4m3fn
        assert moe.w13_weight_scale_inv.shape == (experts, 2 * inter // tp // 128, 2)
        total += moe.quant_method.apply(moe, x, weights, ids)
    torch.testing.assert_close(total, expected, atol=1e-5, rtol=1e-5)


def test_modules_to_not_convert_maps_checkpoint_names_onto_merged_layers():
    from tessera.config.model import ModelConfig
    from tessera.models.loader import keep_unquantized
    from tessera.models.registry import get_model_class

    config = ModelConfig.from_hf_dict({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128,
        "hidden_size": 256, "intermediate_size": 256, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128})
    with quantization(CHECKPOINT_FP8):
        model = get_model_class(config.architecture)(config, torch.float32)
    keep_unquantized(model, ("model.layers.0.mlp.gate_proj", "lm_head"))
    layer = model.model.layers[0]
    assert layer.mlp.gate_up_proj.weight.dtype == torch.float32  # gate_proj's merged layer
    assert not hasattr(layer.mlp.gate_up_proj, "weight_scale_inv")
    assert layer.mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    assert layer.self_attn.qkv_proj.weight.dtype == torch.float8_e4m3fn
