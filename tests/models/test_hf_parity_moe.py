"""MoE models' logits equal HF transformers' on the same random weights (CPU, float32): mixed
prefill, extend on a cached prefix, batched and one-row decode (check_parity), and greedy
generation through the engine."""
from __future__ import annotations

import pytest
import torch
from hf_models import save_tiny_model
from test_hf_parity import check_greedy_generation, check_parity

KINDS = ["qwen3_moe", "qwen3_moe_top6", "mixtral"]


@pytest.mark.parametrize("kind", KINDS)
def test_moe_logits_match_hf_cpu_fp32(tmp_path, kind):
    path = save_tiny_model(str(tmp_path / kind), kind)
    check_parity(path, "cpu", torch.float32, atol=1e-4)


@pytest.mark.parametrize("kind", ["qwen3_moe", "mixtral"])
def test_moe_greedy_generation_matches_hf(tmp_path, kind):
    check_greedy_generation(save_tiny_model(str(tmp_path / kind), kind))
