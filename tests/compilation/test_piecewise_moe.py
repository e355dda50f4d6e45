"""The enforced piecewise path (compiled pieces split at attention, CPU) equals eager for tiny MoE
models: Qwen3-MoE (sparse, dense, sparse layers) and DeepSeek-V2 (MLA attention; a dense layer,
then sparse layers with shared experts). The fused-MoE op (and DeepSeek's absorbed MLA
projections) stay inside the pieces; attention is the only split."""
from __future__ import annotations

import pytest
import torch
from hf_models import save_tiny_model
from pcg_helpers import MixedBatches, make_pcg_runner, pcg_and_eager_logits, pcg_of

from tessera.compilation.splitting import op_qualname


@pytest.mark.parametrize("model", ["qwen3_moe", "deepseek_v2"])
def test_moe_piecewise_logits_equal_eager(tmp_path, model):
    path = save_tiny_model(str(tmp_path / model), model)
    runner = make_pcg_runner(path, piecewise_cuda_graph_max_tokens=16)
    pcg = pcg_of(runner)
    layers = runner.model_config.num_hidden_layers
    pieces = pcg.backend.pieces
    assert [p.is_splitting for p in pieces] == [i % 2 == 1 for i in range(2 * layers + 1)]
    ops = [op_qualname(n.target) or "" for p in pieces if not p.is_splitting
           for n in p.module.graph.nodes if n.op == "call_function"]
    # the trunk runs the first two layers' MLPs (one of them sparse); the last one is finish's
    assert [o for o in ops if "fused_moe" in o] == ["tessera::fused_moe_torch"]
    assert "tessera::attention" not in ops
    batches = MixedBatches(runner)
    for total in (1, 3, 7, 16):
        for all_logits in (True, False):
            ours, eager = pcg_and_eager_logits(runner, batches.mixed(total, all_logits))
            if all_logits:
                torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=1e-5,
                                           rtol=1e-5)
            torch.testing.assert_close(ours.next_token_logits, eager.next_token_logits,
                                       atol=1e-5, rtol=1e-5)
            batches.free()
