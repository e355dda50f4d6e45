"""DeepSeek-V2/V3 (MLA + MoE with shared experts) logits equal HF transformers' on the same
random weights (CPU, float32), through the torch_native MLA backend: mixed prefill, extend on a
cached prefix, batched and one-row decode (check_parity), and greedy generation through the
engine. Kinds: tests/hf_models.py (q_proj or q_lora, greedy / group-limited / noaux_tc routing,
YaRN with and without an attention factor, interleaved and NeoX rotary)."""
from __future__ import annotations

import pytest
import torch
from hf_models import DEEPSEEK_KINDS, save_tiny_model
from test_hf_parity import check_greedy_generation, check_parity

from tessera.cache.spec import MLASpec
from tessera.models.loader import load_model, load_model_config


@pytest.mark.parametrize("kind", DEEPSEEK_KINDS)
def test_deepseek_logits_match_hf_cpu_fp32(tmp_path, kind):
    path = save_tiny_model(str(tmp_path / kind), kind)
    check_parity(path, "cpu", torch.float32, atol=1e-4)


def test_deepseek_greedy_generation_matches_hf(tmp_path):
    check_greedy_generation(save_tiny_model(str(tmp_path / "dsv2"), "deepseek_v2"))


def test_deepseek_loads_without_mtp_layer_and_caches_one_latent(tmp_path):
    """A V3 checkpoint's extra multi-token-prediction layer (model.layers.<num_hidden_layers>)
    is skipped, every parameter is loaded, and the KV spec is one latent per token and layer."""
    from safetensors.torch import load_file

    path = save_tiny_model(str(tmp_path / "dsv3"), "deepseek_v3")
    config = load_model_config(path)
    model = load_model(path, config, "dummy", torch.float32, "cpu")
    weights = load_file(f"{path}/model.safetensors")
    mtp = {"model.layers.3.self_attn.kv_b_proj.weight": torch.zeros(1),
           "model.layers.3.eh_proj.weight": torch.zeros(1)}
    loaded = model.load_weights([*weights.items(), *mtp.items()])
    assert loaded == {n for n, _ in model.named_parameters()}
    spec = model.kv_cache_spec()
    assert spec == MLASpec(3, 32, 8, torch.float32) and spec.latent_dim == 40
    bias = model.model.layers[1].mlp.gate.e_score_correction_bias
    torch.testing.assert_close(bias, weights["model.layers.1.mlp.gate.e_score_correction_bias"])
