"""DeepSeek-V2 (MLA + MoE) under tensor parallelism on CPU (gloo): TP=2 equals TP=1. The heads
split over the ranks (q_proj and kv_b_proj column-parallel by whole heads, o_proj
row-parallel), every rank caches the same latent (kv_a_proj_with_mqa replicated), and the
experts split their intermediate dim."""
from __future__ import annotations

import torch
from hf_models import save_tiny_model
from test_tensor_parallel import run_driver


def test_deepseek_tp2_logits_equal_tp1(tmp_path):
    path = save_tiny_model(str(tmp_path / "deepseek_v2"), "deepseek_v2")
    ref_path, tp_path = str(tmp_path / "tp1.pt"), str(tmp_path / "tp2.pt")
    run_driver("logits", path, "1", ref_path)
    run_driver("logits", path, "2", tp_path)
    ref, got = torch.load(ref_path), torch.load(tp_path)
    for step in ("extend", "decode", "extend2"):
        assert ref[step].shape == got[step].shape
        torch.testing.assert_close(got[step], ref[step], rtol=1e-4, atol=1e-4, msg=step)


def test_deepseek_tp2_dummy_weights_are_the_tp1_model_sharded(tmp_path):
    """tiny-deepseek-v2 preset, dummy weights: each rank keeps its shard of the whole TP=1
    tensors, the stacked experts included (FusedMoE.weight_loader without an expert id)."""
    ref_path, tp_path = str(tmp_path / "tp1.pt"), str(tmp_path / "tp2.pt")
    run_driver("logits", "tiny-deepseek-v2", "1", ref_path)
    run_driver("logits", "tiny-deepseek-v2", "2", tp_path)
    ref, got = torch.load(ref_path), torch.load(tp_path)
    for step in ("extend", "decode"):
        torch.testing.assert_close(got[step], ref[step], rtol=1e-4, atol=1e-4, msg=step)
