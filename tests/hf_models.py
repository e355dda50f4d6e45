"""Tiny random HF models saved with save_pretrained: the correctness oracle's inputs."""
from __future__ import annotations

import json
import os

import torch

TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 300, "max_position_embeddings": 2048,
            "rms_norm_eps": 1e-6, "bos_token_id": 1, "eos_token_id": 2}


def make_config(kind: str, tied: bool = False):
    import transformers as tf

    if kind == "llama":
        return tf.LlamaConfig(**TINY, tie_word_embeddings=tied, rope_theta=500000.0,
                              rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                            "original_max_position_embeddings": 256})
    if kind == "qwen2":
        return tf.Qwen2Config(**TINY, tie_word_embeddings=tied, rope_theta=1000000.0)
    if kind == "qwen3":
        return tf.Qwen3Config(**TINY, head_dim=32, tie_word_embeddings=tied,
                              rope_theta=1000000.0)
    if kind == "qwen3_moe":  # 3 layers, the middle one dense: both MLP kinds, a sparse last one
        return tf.Qwen3MoeConfig(**{**TINY, "num_hidden_layers": 3}, head_dim=32,
                                 tie_word_embeddings=tied, rope_theta=1000000.0, num_experts=8,
                                 num_experts_per_tok=2, moe_intermediate_size=32,
                                 norm_topk_prob=True, decoder_sparse_step=1, mlp_only_layers=[1])
    if kind == "qwen3_moe_dense_runs":  # sparse, dense, dense, sparse, dense: every layout
        return tf.Qwen3MoeConfig(**{**TINY, "num_hidden_layers": 5}, head_dim=16,
                                 tie_word_embeddings=tied, rope_theta=1000000.0, num_experts=8,
                                 num_experts_per_tok=2, moe_intermediate_size=32,
                                 norm_topk_prob=True, decoder_sparse_step=1,
                                 mlp_only_layers=[1, 2, 4])
    if kind == "qwen3_moe_top6":  # top-6 of 8 without renormalisation
        return tf.Qwen3MoeConfig(**TINY, head_dim=16, tie_word_embeddings=tied,
                                 rope_theta=1000000.0, num_experts=8, num_experts_per_tok=6,
                                 moe_intermediate_size=16, norm_topk_prob=False)
    if kind in DEEPSEEK_KINDS:
        return _deepseek_config(kind, tied)
    if kind == "mixtral":
        return tf.MixtralConfig(**{**TINY, "intermediate_size": 48}, tie_word_embeddings=tied,
                                rope_theta=1000000.0, num_local_experts=4,
                                num_experts_per_tok=2)
    raise ValueError(kind)


DEEPSEEK_KINDS = ("deepseek_v2", "deepseek_v2_qlora", "deepseek_v3")


def _deepseek_config(kind: str, tied: bool):
    """Three layers (one dense, two sparse) of MLA + MoE with shared experts and YaRN:
    deepseek_v2: q_proj, group-limited softmax routing, routed scaling; deepseek_v2_qlora:
    q_a_proj / q_b_proj, plain greedy top-k, a YaRN attention factor != 1; deepseek_v3: q_lora,
    sigmoid scores with a correction bias (noaux_tc), renormalised, NeoX rotary, and the
    multi-token-prediction layer V3 checkpoints carry."""
    import transformers as tf

    base = {**TINY, "num_hidden_layers": 3, "num_key_value_heads": 4,
            "tie_word_embeddings": tied, "kv_lora_rank": 32, "qk_nope_head_dim": 16,
            "qk_rope_head_dim": 8, "v_head_dim": 16, "first_k_dense_replace": 1,
            "n_routed_experts": 8, "num_experts_per_tok": 3, "moe_intermediate_size": 32}
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "beta_fast": 32,
            "beta_slow": 1, "original_max_position_embeddings": 256}
    if kind == "deepseek_v2":
        return tf.DeepseekV2Config(**base, q_lora_rank=None, n_shared_experts=2,
                                   topk_method="group_limited_greedy", n_group=4, topk_group=2,
                                   routed_scaling_factor=1.5,
                                   rope_parameters={**yarn, "mscale": 0.707,
                                                    "mscale_all_dim": 0.707})
    if kind == "deepseek_v2_qlora":
        return tf.DeepseekV2Config(**base, q_lora_rank=24, n_shared_experts=1,
                                   topk_method="greedy",
                                   rope_parameters={**yarn, "mscale": 1.0,
                                                    "mscale_all_dim": 0.707})
    return tf.DeepseekV3Config(**base, q_lora_rank=24, n_shared_experts=1, n_group=4,
                               topk_group=2, norm_topk_prob=True, routed_scaling_factor=2.5,
                               rope_interleave=False, num_mtp_layers=1,
                               rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def save_tiny_model(path: str, kind: str, tied: bool = False, seed: int = 0,
                    dtype: torch.dtype = torch.float32) -> str:
    import transformers as tf

    os.makedirs(path, exist_ok=True)
    torch.manual_seed(seed)
    config = make_config(kind, tied)
    model = tf.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():  # larger-than-default init so differences are not hidden by tiny logits
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
            else:
                p.normal_(0, 0.08)
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):  # DeepSeek-V3: make the bias matter
                b.normal_(0, 0.1)
    model.to(dtype).save_pretrained(path)
    return path


FP8_BLOCK = (128, 128)
FP8_KEPT_LAYER = "model.layers.1.self_attn.o_proj"  # in modules_to_not_convert


def _fp8_config(kind: str, layers: int):
    import transformers as tf

    common = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": layers,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128,
              "vocab_size": 300, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
              "rope_theta": 1000000.0, "tie_word_embeddings": False}
    if kind == "qwen3":
        return tf.Qwen3Config(**common)
    return tf.Qwen3MoeConfig(**common, num_experts=4, num_experts_per_tok=2,
                             moe_intermediate_size=128, norm_topk_prob=True,
                             decoder_sparse_step=1, mlp_only_layers=[0])


def save_fp8_pair(root: str, kind: str, layers: int = 2) -> tuple[str, str, str]:
    """A tiny Qwen3 / Qwen3-MoE (dims multiples of 128) saved three ways: (unquantized dir,
    block-FP8 dir, dequantized dir). The FP8 one is an HF "fp8" checkpoint: every `*_proj`
    weight but FP8_KEPT_LAYER's as float8_e4m3fn + `weight_scale_inv` per 128x128 block, and
    `quantization_config` (listing FP8_KEPT_LAYER in modules_to_not_convert); the dequantized
    one holds fp8 * scale_inv in float32, what HF runs as the oracle."""
    import transformers as tf
    from safetensors.torch import load_file, save_file

    from tessera.ops.fp8_reference import dequantize_block_fp8, quantize_block_fp8

    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(_fp8_config(kind, layers), torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if "norm" in name else 0.08 * torch.randn_like(p))
    dirs = [os.path.join(root, d) for d in ("plain", "fp8", "dequantized")]
    for d in (dirs[0], dirs[2]):
        model.save_pretrained(d)
    state = load_file(os.path.join(dirs[0], "model.safetensors"))
    fp8, dequantized = {}, {}
    for name, tensor in state.items():
        quantize = name.endswith("_proj.weight") and not name.startswith(FP8_KEPT_LAYER)
        if not quantize:
            fp8[name] = dequantized[name] = tensor
            continue
        q, s = quantize_block_fp8(tensor, FP8_BLOCK)
        fp8[name], fp8[name + "_scale_inv"] = q, s
        dequantized[name] = dequantize_block_fp8(q, s, FP8_BLOCK)
    os.makedirs(dirs[1])
    save_file(fp8, os.path.join(dirs[1], "model.safetensors"), metadata={"format": "pt"})
    save_file(dequantized, os.path.join(dirs[2], "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(dirs[0], "config.json")) as f:
        config = json.load(f)
    config["quantization_config"] = {"quant_method": "fp8", "weight_block_size": list(FP8_BLOCK),
                                     "activation_scheme": "dynamic", "fmt": "e4m3",
                                     "modules_to_not_convert": ["lm_head", FP8_KEPT_LAYER]}
    with open(os.path.join(dirs[1], "config.json"), "w") as f:
        json.dump(config, f)
    return dirs[0], dirs[1], dirs[2]


def load_hf(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"):
    import transformers as tf

    kw = {}
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    if (config.get("num_experts") or config.get("num_local_experts")
            or config.get("n_routed_experts")):
        # the plain per-expert loop: the simplest oracle, and 3x faster on the CPU than the
        # default grouped_mm
        kw["experts_implementation"] = "eager"
    model = tf.AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, **kw)
    return model.to(device).eval()


# Llama 3's chat format: the template writes the BOS itself, and the tokenizer's post-processor
# adds one too when asked for special tokens (the double-BOS trap).
LLAMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>"
    "\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
    "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"]


def save_llama3_style_tokenizer(path: str, chat_template: str | None = LLAMA3_CHAT_TEMPLATE
                                ) -> str:
    """A byte-level tokenizer (no merges: one token per byte, 256 ids, then the 4 specials)
    whose post-processor prepends <|begin_of_text|>, as Llama 3's does; fits TINY's vocab."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(LLAMA3_SPECIALS)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>",
                                   eos_token="<|eot_id|>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


# Qwen3's chat format: the model opens <think> itself; enable_thinking=false writes an empty
# reasoning block into the prompt instead.
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}")


def save_think_model(path: str) -> str:
    """A tiny random Qwen3 with a Qwen3-style tokenizer: one token per byte (256 ids), then
    <|endoftext|>, <|im_start|>, <|im_end|> (special, the EOS) and <think>, </think> (plain added
    tokens, kept in decoded text, as Qwen3's are). Its lm_head is scaled down 100x, so the next
    token is close to uniform and a request's logit_bias and penalties alone decide the tokens
    they favour (what tests of reasoning need from a model that cannot think)."""
    from safetensors.torch import load_file, save_file
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    save_tiny_model(path, "qwen3")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(sorted(alphabet))},
                               merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tok.add_tokens([AddedToken("<think>", special=False, normalized=False),
                    AddedToken("</think>", special=False, normalized=False)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")
    fast.chat_template = QWEN3_CHAT_TEMPLATE
    fast.save_pretrained(path)
    for name in ("config.json", "generation_config.json"):
        with open(os.path.join(path, name)) as f:
            config = json.load(f)
        config["eos_token_id"] = fast.eos_token_id  # not TINY's 2, a byte here
        config["bos_token_id"] = None
        with open(os.path.join(path, name), "w") as f:
            json.dump(config, f)
    weights = os.path.join(path, "model.safetensors")
    tensors = load_file(weights)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] * 0.01
    save_file(tensors, weights, metadata={"format": "pt"})
    return path
