"""Constrained decoding for reasoning models (SamplingParams.require_reasoning): the grammar
waits for `</think>`, then constrains the answer, in every sample, through retraction, n > 1 and
either schedule; a tokenizer without a single `</think>` token is refused.

The model (hf_models.save_think_model) has a near-uniform next token, so the logit_bias below
decides the reasoning: "x" (+50) or `</think>` (+49) at each step, so some "x"s and then the end
of the reasoning. The grammars forbid both, so without require_reasoning neither can appear.
"""
from __future__ import annotations

import json
import re

import pytest
from hf_models import save_think_model

from tessera import LLM, SamplingParams

SCHEMA = {"type": "object", "properties": {
    "k": {"type": "integer", "minimum": 0, "maximum": 999}, "b": {"type": "boolean"}},
    "required": ["k", "b"], "additionalProperties": False}
REGEX = r"[a-f]{4,12}(-[0-9]{2}){1,3}"
COUNT = 24  # requests per run; odd ones follow SCHEMA, even ones REGEX


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return save_think_model(str(tmp_path_factory.mktemp("think")))


def _params(llm: LLM, reasoning: bool, n: int = 1) -> list[SamplingParams]:
    x, = llm.tokenizer.encode("x", add_special_tokens=False)
    end = llm.engine.think_end_id
    out = []
    for i in range(COUNT):
        grammar = {"json_schema": json.dumps(SCHEMA)} if i % 2 else {"regex": REGEX}
        out.append(SamplingParams(max_new_tokens=64, temperature=1.0, seed=100 * i, n=n,
                                  logit_bias={x: 50, end: 49}, require_reasoning=reasoning,
                                  **grammar))
    return out


def _generate(path: str, reasoning: bool, n: int = 1, **engine_kwargs) -> tuple[list[str], int]:
    with LLM(model=path, device="cpu", dtype="float32", **engine_kwargs) as llm:
        outs = llm.generate([f"Prompt {i % 3}" for i in range(COUNT)],
                            _params(llm, reasoning, n))
        texts = [s.text for o in outs for s in o.outputs]
        return texts, llm.engine.scheduler.num_retractions


def _check_answer(i: int, answer: str) -> None:
    if i % 2:
        value = json.loads(answer)
        assert set(value) == {"k", "b"} and 0 <= value["k"] <= 999, answer
    else:
        assert re.fullmatch(REGEX, answer), answer


def test_grammar_starts_after_think_end(model_path):
    texts, _ = _generate(model_path, reasoning=True, kv_cache_tokens=16384)
    thoughts = []
    for i, text in enumerate(texts):
        # the reasoning is free (the grammar forbids "x" and </think>), the answer follows it
        match = re.fullmatch(r"(x*)</think>(.*)", text, re.DOTALL)
        assert match, text
        thoughts.append(match.group(1))
        _check_answer(i, match.group(2))
    assert sum(map(len, thoughts)) > COUNT  # ~2.7 "x" a request on average


def test_without_require_reasoning_the_grammar_starts_at_once(model_path):
    texts, _ = _generate(model_path, reasoning=False, kv_cache_tokens=16384)
    for i, text in enumerate(texts):
        _check_answer(i, text)  # the same bias: neither "x" nor </think> got through


@pytest.mark.parametrize("overlap", [True, False])
def test_reasoning_state_survives_retraction_and_n(model_path, overlap):
    roomy, retractions = _generate(model_path, True, n=2, kv_cache_tokens=16384,
                                   disable_radix_cache=True, disable_overlap_schedule=not overlap)
    assert retractions == 0
    tight, retractions = _generate(model_path, True, n=2, kv_cache_tokens=400,
                                   chunked_prefill_size=32, max_running_requests=48,
                                   disable_overlap_schedule=not overlap,
                                   init_new_token_ratio=0.0, min_new_token_ratio=0.0)
    assert retractions > 0
    assert tight == roomy
    for i, text in enumerate(roomy):
        _check_answer(i // 2, text.split("</think>", 1)[1])
    assert len(set(roomy[0::2]) - set(roomy[1::2])) > COUNT // 2  # the n samples differ


def test_require_reasoning_is_validated_and_needs_a_think_end_token():
    with pytest.raises(ValueError, match="require_reasoning needs an output constraint"):
        SamplingParams(require_reasoning=True)
    with pytest.raises(ValueError, match="require_reasoning must be true or false"):
        SamplingParams(regex="a", require_reasoning="yes")
    with LLM(kv_cache_tokens=2048) as llm:  # the byte tokenizer: </think> is 8 tokens
        assert llm.engine.think_end_id is None
        with pytest.raises(ValueError, match="does not encode </think> as one token"):
            llm.engine.validate_prompt([1, 2], SamplingParams(regex="a", require_reasoning=True))
