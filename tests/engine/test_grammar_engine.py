"""Grammar-constrained decoding in the engine: outputs follow their grammar and are the same
whether or not requests were retracted or served from the prefix cache, with or without the
overlap schedule."""
from __future__ import annotations

import json
import re

import pytest

from tessera import LLM, SamplingParams

SCHEMA = json.dumps({"type": "object", "properties": {
    "k": {"type": "integer", "minimum": 0, "maximum": 999}, "b": {"type": "boolean"}},
    "required": ["k", "b"], "additionalProperties": False})
REGEX = r"[a-f]{4,12}(-[0-9]{2}){1,3}"
PROMPT = "Prompt "  # + i % 3: three prompts, each shared by a third of the requests


def run(prompt_count: int, **engine_kwargs) -> tuple[list[str], int]:
    llm = LLM(**engine_kwargs)
    try:
        params = []
        for i in range(prompt_count):
            grammar = {"json_schema": SCHEMA} if i % 2 else {"regex": REGEX}
            params.append(SamplingParams(max_new_tokens=48, temperature=1.0, seed=i, **grammar))
        outs = llm.generate([PROMPT + str(i % 3) for i in range(prompt_count)], params)
        return [o.text for o in outs], llm.engine.scheduler.num_retractions
    finally:
        llm.shutdown()


def check(texts: list[str]) -> None:
    for i, text in enumerate(texts):
        if i % 2:
            value = json.loads(text)
            assert set(value) == {"k", "b"} and 0 <= value["k"] <= 999
        else:
            assert re.fullmatch(REGEX, text), text


@pytest.mark.parametrize("overlap", [True, False])
def test_retraction_and_cache_keep_grammar_outputs(overlap):
    roomy, retractions = run(24, kv_cache_tokens=16384, disable_radix_cache=True,
                             disable_overlap_schedule=not overlap)
    assert retractions == 0
    check(roomy)
    # a pool that forces retractions (admission reserving nothing for outputs: ratio 0), and
    # the radix cache on
    tight, retractions = run(24, kv_cache_tokens=300, chunked_prefill_size=32,
                             max_running_requests=24, disable_overlap_schedule=not overlap,
                             init_new_token_ratio=0.0, min_new_token_ratio=0.0)
    assert retractions > 0
    assert tight == roomy
