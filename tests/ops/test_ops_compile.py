"""Fast ops under torch.compile: fake kernels agree with the real ones, and a decoder layer built
from them compiles with fullgraph=True and zero graph breaks, computing what the native layer does.

On CPU the custom ops execute through the Triton interpreter inside the compiled graph; on a GPU
the same tests run compiled kernels, and the `gpu` test uses a Llama-3-8B-shaped layer.
"""
from __future__ import annotations

import pytest
import torch
from ops_layer_helpers import attention_context, build_layer_pair, llama_config

from tessera.ops import custom_ops


def _opcheck_cases(device: str):
    x = torch.randn(5, 64, device=device, dtype=torch.bfloat16)
    w = torch.randn(64, device=device, dtype=torch.bfloat16)
    q = torch.randn(5, 4, 32, device=device)
    k = torch.randn(5, 2, 32, device=device)
    cache = torch.randn(16, 32, device=device)
    pos = torch.randint(0, 16, (5,), device=device)
    qkv = torch.randn(5, 256, device=device, dtype=torch.bfloat16)
    return [
        (custom_ops.rms_norm, (x, w, 1e-6)),
        (custom_ops.fused_add_rms_norm, (x, torch.randn_like(x), w, 1e-6)),
        (custom_ops.silu_and_mul, (torch.randn(5, 96, device=device),)),
        (custom_ops.embedding, (pos, x)),
        (custom_ops.rotary_embedding, (pos, q, k, cache)),
        (custom_ops.per_token_group_quant_fp8, (x, 32, 1e-10)),
        # strided views of a fused projection, fp32 norm weights on bf16 activations (promotes)
        (custom_ops.qk_norm_rope, (pos, qkv[:, :128].view(5, 4, 32),
                                   qkv[:, 128:192].view(5, 2, 32), torch.randn(32, device=device),
                                   torch.randn(32, device=device), 1e-6, cache)),
    ]


@pytest.mark.parametrize("case", range(7))
def test_custom_op_fake_kernels_match_real(device, case):
    op, args = _opcheck_cases(device)[case]
    # schema, fake-vs-real metadata (shapes, dtypes, strides), and AOT dispatch with dynamic shapes
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor",
                                                "test_aot_dispatch_dynamic"))


def _layer_inputs(config, tokens: int, dtype: torch.dtype, device: str):
    hidden = torch.randn(tokens, config.hidden_size, device=device, dtype=dtype)
    residual = torch.randn(tokens, config.hidden_size, device=device, dtype=dtype)
    positions = torch.arange(tokens, device=device)
    return positions, hidden, residual


@pytest.mark.parametrize("qk_norm", [False, True])
def test_decoder_layer_compiles_without_graph_breaks(fast_ops, device, qk_norm):
    config = llama_config()
    fast, native = build_layer_pair(config, torch.float32, device, qk_norm=qk_norm)
    assert fast.input_layernorm.bound_forward == "forward_cuda"
    assert fast.self_attn.rotary_emb.bound_forward == "forward_cuda"
    positions, hidden, residual = _layer_inputs(config, 12, torch.float32, device)

    def step(positions, hidden, residual):
        # first layer (no residual yet) and a later one (fused add + norm): both code paths
        hidden, residual = fast(positions, hidden, None)
        return fast(positions, hidden, residual)

    with attention_context(), torch.no_grad():
        explained = torch._dynamo.explain(step)(positions, hidden, residual)
        assert explained.graph_break_count == 0
        assert explained.graph_count == 1
        graph_ops = {str(n.target) for g in explained.graphs for n in g.graph.nodes}
        # each fast op is one opaque node (its kernel is never traced into)
        # Qwen3-style q/k norm: norm + rotary are one fused op instead of rotary alone
        rope_op = "tessera.qk_norm_rope" if qk_norm else "tessera.rotary_embedding"
        for op in ("tessera.rms_norm", "tessera.fused_add_rms_norm", "tessera.silu_and_mul",
                   rope_op, "tessera.attention"):
            assert op in graph_ops, op

        torch._dynamo.reset()
        graphs = []

        def backend(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        compiled = torch.compile(step, fullgraph=True, backend=backend, dynamic=True)
        out, res = compiled(positions, hidden, residual)
        ref_hidden, ref_res = native(positions, hidden, None)
        ref_out, ref_res = native(positions, ref_hidden, ref_res)
        torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(res, ref_res, rtol=1e-4, atol=1e-4)
        # a second token count reuses the dynamic graph (no recompile): padded replay depends on it
        positions2, hidden2, residual2 = _layer_inputs(config, 5, torch.float32, device)
        assert compiled(positions2, hidden2, residual2)[0].shape == (5, config.hidden_size)
        assert len(graphs) == 1
    torch._dynamo.reset()


@pytest.mark.gpu
def test_gpu_llama3_8b_layer_compiles_and_matches_native(fast_ops):
    config = llama_config(hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336,
                          max_pos=8192)
    fast, native = build_layer_pair(config, torch.bfloat16, "cuda")
    positions, hidden, residual = _layer_inputs(config, 2048, torch.bfloat16, "cuda")
    with attention_context(), torch.no_grad():
        explained = torch._dynamo.explain(fast)(positions, hidden, residual)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        torch._dynamo.reset()
        compiled = torch.compile(fast, fullgraph=True, backend="inductor", dynamic=True)
        out, res = compiled(positions, hidden, residual)
        ref_out, ref_res = native(positions, hidden, residual)
        eager_out, _ = fast(positions, hidden, residual)
    torch._dynamo.reset()
    # same weights and inputs: fast (compiled) vs native agree to bf16 noise of a whole layer
    for a, b in ((out, ref_out), (res, ref_res), (out, eager_out)):
        assert ((a.float() - b.float()).norm() / b.float().norm()).item() < 1e-2
