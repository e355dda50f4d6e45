"""Block-FP8 checkpoints against HF transformers on the dequantized weights (CPU, float32).

A tiny Qwen3 (and Qwen3-MoE) is saved by HF; the test quantizes its linear weights to 128x128
blocks and writes them as an HF "fp8" checkpoint (`weight` float8_e4m3fn + `weight_scale_inv`,
`quantization_config` in config.json). tessera loads that; HF runs the same weights dequantized
(fp8 * scale_inv per block) in float32. `--quantization fp8` on the unquantized checkpoint must
give the same model (the loader quantizes to the same blocks).

Two oracles, two tolerances (both as a fraction of the largest |logit|):

* HF on the dequantized weights with the same activation rounding as tessera's kernels (every
  quantized projection's input, and the experts' SiLU·mul output, rounded through per-token-group
  FP8 by forward hooks): the same math, so only float32 summation order differs, and an element
  that lands next to an e4m3 rounding boundary may round the other way (one e4m3 step, 2^-3
  relative, on a handful of the thousands of elements). EXACT_FRACTION = 1e-2.
* HF on the dequantized weights, plain (dense model): the difference is tessera's activation
  rounding itself. e4m3 keeps 3 mantissa bits, so each element is off by at most 2^-4 relative
  (about 2^-5 on average) with random signs; each layer's output moves by ~2% of its scale, and
  the ~9 rounded inputs of 2 layers (attention softmax amplifies some) leave logits ~3-6% of the
  largest off (measured 5% at most here). PLAIN_FRACTION = 0.1. Not for the MoE model: a
  token whose top-2 experts nearly tie can switch experts under that rounding, which moves its
  logits by their own size; the first oracle covers the MoE model.

A real bug (a misplaced scale block, a wrong shard, a transposed scale) moves logits by their own
size and fails both.
"""
from __future__ import annotations

import os

import pytest
import torch
from hf_models import FP8_BLOCK as BLOCK
from hf_models import FP8_KEPT_LAYER as KEEP
from hf_models import load_hf, save_fp8_pair
from runner_driver import RunnerDriver
from test_hf_parity import hf_logits, make_runner

from tessera.forward.batch import ForwardMode
from tessera.ops.fp8_reference import dequantize_block_fp8, fp8_round_trip, quantize_block_fp8

EXACT_FRACTION = 1e-2
PLAIN_FRACTION = 0.1


def _round_activations_like_tessera(hf, unquantized: str | None = KEEP) -> None:
    """Forward hooks: each quantized projection's input goes through per-token-group FP8; the
    experts (HF's stacked-parameter module) are replaced by the same per-expert loop with the
    input and the SiLU·mul output rounded."""
    import torch.nn.functional as F

    def round_input(module, args):
        return (fp8_round_trip(args[0], BLOCK[1]), *args[1:])

    for name, module in hf.named_modules():
        if isinstance(module, torch.nn.Linear) and name.endswith("_proj") and name != unquantized:
            module.register_forward_pre_hook(round_input)
        if type(module).__name__ == "Qwen3MoeExperts":
            def experts(x, ids, weights, m=module):
                out = torch.zeros_like(x)
                x = fp8_round_trip(x, BLOCK[1])
                for e in range(m.num_experts):
                    tokens, k = torch.where(ids == e)
                    gate, up = F.linear(x[tokens], m.gate_up_proj[e]).chunk(2, dim=-1)
                    act = fp8_round_trip(F.silu(gate) * up, BLOCK[1])
                    out.index_add_(0, tokens, weights[tokens, k, None] *
                                   F.linear(act, m.down_proj[e]))
                return out

            module.forward = experts


def _check(runner, hf, fraction: float) -> None:
    """Prefill of three prompts (every position's logits), then three batched decode steps."""
    drv = RunnerDriver(runner)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (1, 9, 30)]
    rows = [drv.new_request() for _ in prompts]
    _, logits = drv.step(list(zip(rows, prompts)))
    ref = torch.cat([hf_logits(hf, p, "cpu") for p in prompts])
    atol = fraction * ref.abs().max().item()
    torch.testing.assert_close(logits, ref, atol=atol, rtol=0)
    seqs = [list(p) for p in prompts]
    for _ in range(3):
        last = torch.stack([hf_logits(hf, s, "cpu")[-1] for s in seqs])
        toks = last.argmax(-1).tolist()
        for s, t in zip(seqs, toks):
            s.append(t)
        logits, _ = drv.step([(r, [t]) for r, t in zip(rows, toks)], ForwardMode.DECODE,
                             all_logits=False)
        ref = torch.stack([hf_logits(hf, s, "cpu")[-1] for s in seqs])
        torch.testing.assert_close(logits, ref, atol=atol, rtol=0)


@pytest.mark.parametrize("kind", ["qwen3", "qwen3_moe"])
def test_block_fp8_checkpoint_matches_hf_on_dequantized_weights(tmp_path, kind):
    _, fp8, dequantized = save_fp8_pair(str(tmp_path), kind)
    hf = load_hf(dequantized)
    runner = make_runner(fp8)
    layers = runner.model.model.layers
    # the checkpoint's format reached the layers: fp8 projections (experts too), and the one
    # named in modules_to_not_convert left unquantized
    assert layers[0].self_attn.qkv_proj.weight.dtype == torch.float8_e4m3fn
    assert layers[1].self_attn.o_proj.weight.dtype == torch.float32
    if kind == "qwen3_moe":
        assert layers[1].mlp.w13_weight.dtype == torch.float8_e4m3fn
        assert layers[1].mlp.w2_weight_scale_inv.shape == (4, 2, 1)
    if kind == "qwen3":
        _check(runner, hf, PLAIN_FRACTION)
    _round_activations_like_tessera(hf)
    _check(runner, hf, EXACT_FRACTION)


def test_quantization_flag_quantizes_an_unquantized_checkpoint(tmp_path):
    plain, _, dequantized = save_fp8_pair(str(tmp_path), "qwen3")
    runner = make_runner(plain, quantization="fp8")
    qkv = runner.model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight.dtype == torch.float8_e4m3fn and qkv.weight_scale_inv.shape == (4, 2)
    # layer 1's o_proj is quantized here too (no modules_to_not_convert): HF gets it dequantized
    from safetensors.torch import load_file, save_file

    path = os.path.join(dequantized, "model.safetensors")
    state = load_file(path)
    state[KEEP + ".weight"] = dequantize_block_fp8(*quantize_block_fp8(state[KEEP + ".weight"],
                                                                        BLOCK), BLOCK)
    save_file(state, path, metadata={"format": "pt"})
    hf = load_hf(dequantized)
    _round_activations_like_tessera(hf, unquantized=None)
    _check(runner, hf, EXACT_FRACTION)


def test_quantization_none_on_an_fp8_checkpoint_is_refused(tmp_path):
    _, fp8, _ = save_fp8_pair(str(tmp_path), "qwen3")
    with pytest.raises(ValueError, match="--quantization none: the checkpoint is quantized"):
        make_runner(fp8, quantization="none")
