"""Logits parity with HF transformers for shapes the main parity test does not use: an explicit
head_dim that differs from hidden/heads, multi-query attention (one KV head), an odd group size,
linear rope scaling, Mistral, an intermediate size that is not a power of two, one layer."""
from __future__ import annotations

import json

import hf_models
import pytest
import torch
from test_hf_parity import check_parity

SHAPES = {
    "llama-head_dim-mqa-linear-rope": ("llama", {
        "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 32,
        "intermediate_size": 100, "num_hidden_layers": 2,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0}}),
    "qwen2-group3-tied": ("qwen2", {
        "hidden_size": 96, "num_attention_heads": 6, "num_key_value_heads": 2,
        "intermediate_size": 48, "num_hidden_layers": 1, "tie_word_embeddings": True}),
    "mistral": ("mistral", {
        "hidden_size": 64, "num_attention_heads": 8, "num_key_value_heads": 4,
        "intermediate_size": 128, "num_hidden_layers": 2, "rope_theta": 1e6}),
    "qwen3-head_dim16-mha": ("qwen3", {
        "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 4, "head_dim": 16,
        "intermediate_size": 64, "num_hidden_layers": 3}),
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_logits_match_hf(name, tmp_path, monkeypatch):
    import transformers as tf

    kind, shape = SHAPES[name]
    config_class = {"llama": tf.LlamaConfig, "qwen2": tf.Qwen2Config, "qwen3": tf.Qwen3Config,
                    "mistral": tf.MistralConfig}[kind]
    base = {k: v for k, v in hf_models.TINY.items() if k not in shape}
    config = config_class(**base, **shape)
    monkeypatch.setattr(hf_models, "make_config", lambda kind, tied=False: config)
    path = hf_models.save_tiny_model(str(tmp_path), kind)
    saved = json.loads((tmp_path / "config.json").read_text())
    for key in ("hidden_size", "num_key_value_heads", "intermediate_size", "num_hidden_layers"):
        assert saved[key] == config.to_dict()[key], key  # this shape, not the default one
    check_parity(path, "cpu", torch.float32, 1e-4)
