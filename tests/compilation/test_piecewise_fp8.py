"""The enforced piecewise path (compiled pieces split at attention, CPU) equals eager for a tiny
block-FP8 Qwen3-MoE checkpoint (FP8 dense layer, then two FP8 MoE layers): the FP8 linear math
and the FP8 fused-MoE op stay inside the pieces."""
from __future__ import annotations

import torch
from hf_models import save_fp8_pair
from pcg_helpers import MixedBatches, make_pcg_runner, pcg_and_eager_logits, pcg_of

from tessera.compilation.splitting import op_qualname


def test_block_fp8_moe_piecewise_logits_equal_eager(tmp_path):
    _, fp8, _ = save_fp8_pair(str(tmp_path), "qwen3_moe", layers=3)
    runner = make_pcg_runner(fp8, piecewise_cuda_graph_max_tokens=16)
    assert runner.model.model.layers[1].mlp.w13_weight.dtype == torch.float8_e4m3fn
    pieces = pcg_of(runner).backend.pieces
    ops = [op_qualname(n.target) or "" for p in pieces if not p.is_splitting
           for n in p.module.graph.nodes if n.op == "call_function"]
    # the trunk holds layer 1's MoE (layer 2's is finish's), as one opaque node
    assert ops.count("tessera::fused_moe_fp8_torch") == 1
    batches = MixedBatches(runner)
    for total in (1, 5, 16):
        ours, eager = pcg_and_eager_logits(runner, batches.mixed(total, True))
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours.next_token_logits, eager.next_token_logits, atol=1e-5,
                                   rtol=1e-5)
        batches.free()
