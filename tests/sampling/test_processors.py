"""logit_bias and the grammar bitmask in the sampler, and their SamplingParams checks."""
from __future__ import annotations

import pytest
import torch

from tessera.ops.bitmask import bitmask_words
from tessera.sampling.params import SamplingParams
from tessera.sampling.sampler import Sampler, SamplingBatchInfo

V = 100


def info_for(params: list[SamplingParams], bitmask: torch.Tensor | None = None):
    info = SamplingBatchInfo.build(params, seeds=list(range(len(params))),
                                   step_ids=[0] * len(params), output_ids=None, prompt_ids=None,
                                   vocab_size=V, device="cpu")
    info.token_bitmask = bitmask
    return info


def allow_only(rows: int, allowed: dict[int, list[int]]) -> torch.Tensor:
    mask = torch.full((rows, bitmask_words(V)), -1, dtype=torch.int32)
    for r, ids in allowed.items():
        mask[r] = 0
        for t in ids:
            mask[r, t // 32] |= (1 << (t % 32)) if t % 32 != 31 else -(1 << 31)
    return mask


def test_logit_bias_moves_only_its_row_and_token():
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0), SamplingParams(temperature=0, logit_bias={7: 100}),
              SamplingParams(temperature=0, logit_bias={"9": -100, 7: 100})]
    out = Sampler().sample(logits, info_for(params))
    assert out.token_ids.tolist() == [int(logits[0].argmax()), 7, 7]
    banned = int(logits[0].argmax())
    out = Sampler().sample(logits[:1], info_for([SamplingParams(
        temperature=0, logit_bias={banned: -100})]))
    assert int(out.token_ids[0]) != banned


def test_bitmask_restricts_sampling_per_row():
    logits = torch.randn(4, V, generator=torch.Generator().manual_seed(1))
    allowed = {0: [3, 31, 64], 2: [99]}
    params = [SamplingParams(temperature=1.0, seed=s) for s in range(4)]
    for step in range(20):
        info = info_for(params, allow_only(4, allowed))
        info.steps += step
        tokens = Sampler().sample(logits, info).token_ids.tolist()
        assert tokens[0] in allowed[0] and tokens[2] == 99
    greedy = Sampler().sample(logits, info_for([SamplingParams(temperature=0)] * 4,
                                               allow_only(4, allowed))).token_ids.tolist()
    assert greedy[1] == int(logits[1].argmax()) and greedy[2] == 99
    assert greedy[0] == max(allowed[0], key=lambda t: float(logits[0, t]))


@pytest.mark.parametrize(("kwargs", "word"), [
    ({"logit_bias": {5: 101}}, "logit_bias"), ({"logit_bias": {"x": 1}}, "logit_bias"),
    ({"logit_bias": {-1: 1}}, "logit_bias"), ({"logit_bias": [1]}, "logit_bias"),
    ({"prompt_logprobs": 21}, "prompt_logprobs"), ({"regex": "a", "ebnf": "b"}, "regex"),
    ({"json_schema": 5}, "json_schema")])
def test_invalid_values_name_the_field(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SamplingParams(**kwargs)


def test_grammar_property():
    assert SamplingParams().grammar is None
    assert SamplingParams(regex="a+").grammar == ("regex", "a+")
