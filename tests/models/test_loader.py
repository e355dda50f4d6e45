"""Config parsing, presets, loader errors, sharded checkpoints."""
from __future__ import annotations

import json

import pytest
import torch
from hf_models import save_tiny_model
from test_hf_parity import check_parity

from tessera.config.model import ModelConfig, parse_rope
from tessera.models.loader import load_model, load_model_config
from tessera.models.presets import PRESETS
from tessera.models.tokenizer import ByteTokenizer


def test_rope_forms_parse_the_same():
    legacy = {"rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0,
              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 8192}}
    v5 = {"rope_parameters": {"rope_theta": 500000.0, **legacy["rope_scaling"]}}
    assert parse_rope(legacy) == parse_rope(v5)
    assert parse_rope({"rope_theta": 1e6}) == (1e6, None)
    assert parse_rope({"rope_parameters": {"rope_type": "default", "rope_theta": 1e4}}) == (1e4, None)
    # old-style "type" key
    _theta, scaling = parse_rope({"rope_scaling": {"type": "linear", "factor": 2.0}})
    assert scaling["rope_type"] == "linear"


def test_unknown_architecture_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": ["GPTNeoXForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2}))
    with pytest.raises(ValueError, match="not supported.*LlamaForCausalLM.*Qwen3ForCausalLM"):
        load_model_config(str(tmp_path))


def test_missing_and_malformed_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist and is not a preset"):
        load_model_config(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_model_config(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_model_config(str(tmp_path))


def test_missing_weights_is_a_clear_error(tmp_path):
    path = save_tiny_model(str(tmp_path / "m"), "llama")
    for f in tmp_path.glob("m/*.safetensors"):
        f.unlink()
    cfg = load_model_config(path)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_model(path, cfg, "auto", torch.float32, "cpu")


def test_sharded_checkpoint_loads_and_matches_hf(tmp_path):
    import transformers as tf

    path = save_tiny_model(str(tmp_path / "one"), "qwen3")
    hf = tf.AutoModelForCausalLM.from_pretrained(path)
    sharded = str(tmp_path / "sharded")
    hf.save_pretrained(sharded, max_shard_size="50KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    check_parity(sharded, "cpu", torch.float32, atol=1e-4)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3"])
def test_presets_load_dummy_weights_deterministically(name):
    cfg = ModelConfig.from_hf_dict(PRESETS[name])
    a = load_model(name, cfg, "auto", torch.float32, "cpu", seed=3)
    b = load_model(name, cfg, "auto", torch.float32, "cpu", seed=3)
    for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="no weight files"):
        load_model(name, cfg, "safetensors", torch.float32, "cpu")


def test_real_preset_shapes():
    q = ModelConfig.from_hf_dict(PRESETS["qwen3-0.6b"])
    assert (q.num_hidden_layers, q.hidden_size, q.num_attention_heads, q.head_dim) == (28, 1024, 16, 128)
    assert q.tie_word_embeddings and q.vocab_size == 151936
    m = torch.device("meta")
    for name, billions in [("qwen3-0.6b", 0.60), ("llama3-8b", 8.03)]:
        cfg = ModelConfig.from_hf_dict(PRESETS[name])
        from tessera.models.registry import get_model_class
        with m:
            model = get_model_class(cfg.architecture)(cfg, torch.bfloat16)
        n = sum(p.numel() for p in model.parameters()) / 1e9
        assert abs(n - billions) < 0.01, (name, n)


def test_byte_tokenizer_roundtrip_and_chat_template():
    tok = ByteTokenizer()
    text = "héllo <|im_end|> wörld ✓"
    ids = tok.encode(text)
    assert 258 in ids
    assert tok.decode(ids, skip_special_tokens=False) == text
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert chat == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
