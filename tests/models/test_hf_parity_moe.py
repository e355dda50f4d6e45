"""MoE models' logits equal HF transformers' on the same random weights (CPU, float32): mixed
prefill, extend on a cached prefix, batched and one-row decode (check_parity), and greedy
generation through the engine."""
from __future__ import annotations

import pytest
import torch
from hf_models import load_hf, save_tiny_model
from test_hf_parity import check_parity

from tessera import LLM, SamplingParams

KINDS = ["qwen3_moe", "qwen3_moe_top6", "mixtral"]


@pytest.mark.parametrize("kind", KINDS)
def test_moe_logits_match_hf_cpu_fp32(tmp_path, kind):
    path = save_tiny_model(str(tmp_path / kind), kind)
    check_parity(path, "cpu", torch.float32, atol=1e-4)


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral"])
def test_moe_greedy_generation_matches_hf(tmp_path, kind):
    path = save_tiny_model(str(tmp_path / kind), kind)
    hf = load_hf(path)
    prompts = [[5, 17, 42, 9], [100, 3, 250, 77, 8, 61, 33]]
    params = SamplingParams(temperature=0.0, max_new_tokens=12, ignore_eos=True)
    with LLM(model=path, device="cpu", dtype="float32", attention_backend="torch_native",
             disable_cuda_graph=True, disable_piecewise_cuda_graph=True,
             kv_cache_tokens=1024) as llm:
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                              min_new_tokens=12)[0, len(prompt):].tolist()
        assert out.token_ids == ref
