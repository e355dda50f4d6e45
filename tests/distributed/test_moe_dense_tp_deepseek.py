"""`--moe-dense-tp-size 1` on DeepSeek-V2 (MLA attention; its first layer dense through
first_k_dense_replace): TP=2 over gloo with the piecewise graph enforced equals TP=1, the
combination SGLang's own test of the feature serves (DeepSeek-V2-Lite, --tp N
--moe-dense-tp-size 1, PCG). The layouts themselves are test_moe_dense_tp's."""
from __future__ import annotations

import torch
from hf_models import save_tiny_model
from test_moe_dense_tp import PCG, run_driver


def test_deepseek_v2_scattered_dense_layer_with_pcg_equals_tp1(tmp_path):
    model = save_tiny_model(str(tmp_path / "deepseek_v2"), "deepseek_v2")
    ref = run_driver(model, 1, str(tmp_path / "tp1.pt"), {})
    got = run_driver(model, 2, str(tmp_path / "tp2.pt"), PCG)
    assert "error" not in got, got["error"]
    assert got["capture_sizes"] == [8, 16] and got["replays"] == 3
    # layer 0 (dense) reduce-scatters its MLA output; layer 1 gathers its normed input and
    # its residual; layer 2 (the last) never scatters
    assert got["piece_ops"].count("tessera::tp_reduce_scatter") == 1
    assert got["piece_ops"].count("tessera::tp_all_gather_tokens") == 2
    for step, (ours, theirs) in enumerate(zip(got["logits"], ref["logits"], strict=True)):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4, msg=f"step {step}")
