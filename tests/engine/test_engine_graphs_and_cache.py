"""End-to-end greedy equality through the whole engine: piecewise graphs on vs off, radix cache
on vs off (CPU through the enforced piecewise path; CUDA with real graph capture)."""
from __future__ import annotations

import pytest
import torch
from hf_models import save_tiny_model

from tessera import LLM, SamplingParams


def _prompts(seed: int = 3) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    system = torch.randint(3, 300, (120,), generator=g).tolist()
    shared = [system + torch.randint(3, 300, (k * 7 + 1,), generator=g).tolist()
              for k in range(8)]
    lone = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (1, 2, 33, 250)]
    return shared + lone


def _greedy(path: str, device: str, **kw) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_new_tokens=24, min_new_tokens=24, ignore_eos=True)
    with LLM(model=path, device=device, dtype="float32", kv_cache_tokens=16384,
             chunked_prefill_size=64, max_running_requests=8, **kw) as llm:
        outs = llm.generate(prompt_token_ids=_prompts(), sampling_params=params)
        llm.engine.scheduler.check_kv_invariant()
    return [o.token_ids for o in outs]


@pytest.fixture(scope="module")
def qwen3_path(tmp_path_factory):
    return save_tiny_model(str(tmp_path_factory.mktemp("qwen3")), "qwen3")


def test_piecewise_on_and_off_give_the_same_tokens_cpu(qwen3_path):
    on = _greedy(qwen3_path, "cpu", enforce_piecewise_cuda_graph=True,
                 piecewise_cuda_graph_max_tokens=128)
    off = _greedy(qwen3_path, "cpu", disable_piecewise_cuda_graph=True)
    assert on == off


@pytest.mark.gpu
def test_piecewise_on_and_off_give_the_same_tokens_cuda(qwen3_path):
    on = _greedy(qwen3_path, "cuda", piecewise_cuda_graph_max_tokens=128)
    off = _greedy(qwen3_path, "cuda", disable_piecewise_cuda_graph=True, disable_cuda_graph=True)
    assert on == off


@pytest.mark.gpu
def test_radix_cache_on_and_off_give_the_same_tokens_cuda(qwen3_path):
    on = _greedy(qwen3_path, "cuda")
    off = _greedy(qwen3_path, "cuda", disable_radix_cache=True)
    assert on == off
