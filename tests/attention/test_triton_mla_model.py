"""The Triton MLA backend under a real model: tiny DeepSeek-V2 served end to end (prefill of
several requests, a cached prefix, decode) gives the torch-native MLA backend's greedy tokens.
Without CUDA the kernels run in Triton's interpreter."""
from __future__ import annotations

from attention_cases import DEVICE  # noqa: F401  (also patches the interpreter)

from tessera import LLM, SamplingParams


def greedy(backend: str) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_new_tokens=6, ignore_eos=True)
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12, 13], list(range(20, 50))]
    with LLM("tiny-deepseek-v2", device="cpu", load_format="dummy",
             attention_backend=backend) as llm:
        first = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        # the same prompts again: their prefixes come from the radix cache
        again = llm.generate(prompt_token_ids=[p + [60] for p in prompts],
                             sampling_params=params)
        assert max(o.num_cached_tokens for o in again) > 0
    return [o.token_ids for o in first + again]


def test_deepseek_triton_mla_equals_torch_native() -> None:
    assert greedy("triton") == greedy("torch_native")
