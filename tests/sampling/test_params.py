from __future__ import annotations

import dataclasses
import math

import pytest

from tessera import SamplingParams

BAD_VALUES = [
    # (field, value, a piece of the message the user sees)
    ("max_new_tokens", -1, ">= 0"),
    ("max_new_tokens", True, "integer"),
    ("max_new_tokens", "16", "integer"),
    ("max_new_tokens", 2.5, "integer"),
    ("min_new_tokens", -1, "[0, max_new_tokens=128]"),
    ("min_new_tokens", 129, "[0, max_new_tokens=128]"),
    ("temperature", -0.1, ">= 0"),
    ("temperature", math.nan, "finite"),
    ("temperature", math.inf, "finite"),
    ("temperature", "hot", "number"),
    ("temperature", None, "number"),
    ("top_p", 0.0, "(0, 1]"),
    ("top_p", 1.5, "(0, 1]"),
    ("top_p", math.nan, "finite"),
    ("top_p", False, "number"),
    ("top_k", 0, "-1 (off) or >= 1"),
    ("top_k", -2, "-1 (off) or >= 1"),
    ("top_k", 1.5, "integer"),
    ("min_p", -0.01, "[0, 1]"),
    ("min_p", 1.01, "[0, 1]"),
    ("repetition_penalty", 0.0, "(0, 2]"),
    ("repetition_penalty", 2.5, "(0, 2]"),
    ("frequency_penalty", -2.1, "[-2, 2]"),
    ("frequency_penalty", 3, "[-2, 2]"),
    ("presence_penalty", 2.01, "[-2, 2]"),
    ("presence_penalty", -math.inf, "finite"),
    ("stop", 5, "string"),
    ("stop", ["ok", 3], "strings"),
    ("stop", "", "non-empty"),
    ("stop", ["a", ""], "non-empty"),
    ("stop_token_ids", 7, "list of integers"),
    ("stop_token_ids", [1, -3], ">= 0"),
    ("stop_token_ids", [1, "2"], "integer"),
    ("stop_token_ids", [True], "integer"),
    ("ignore_eos", 1, "true or false"),
    ("skip_special_tokens", "yes", "true or false"),
    ("n", 0, "[1, 128]"),
    ("n", 129, "[1, 128]"),
    ("seed", "42", "integer"),
    ("seed", 1.5, "integer"),
    ("seed", False, "integer"),
    ("logprobs", 1, "true or false"),
    ("top_logprobs", -1, "[0, 20]"),
    ("top_logprobs", 21, "[0, 20]"),
]


@pytest.mark.parametrize(("field", "value", "expected"), BAD_VALUES,
                         ids=[f"{f}={v!r}" for f, v, _ in BAD_VALUES])
def test_bad_value_names_field_and_range(field, value, expected):
    kwargs = {field: value}
    if field == "top_logprobs":
        kwargs["logprobs"] = True
    with pytest.raises(ValueError) as err:
        SamplingParams(**kwargs)
    message = str(err.value)
    assert message.startswith(field), message
    assert expected in message, message


def test_message_format_matches_docs():
    with pytest.raises(ValueError, match=r"^top_p must be in \(0, 1\], got 1\.5$"):
        SamplingParams(top_p=1.5)


def test_defaults_are_valid_and_not_greedy():
    p = SamplingParams()
    assert p.stop == [] and p.stop_token_ids == []
    assert not p.is_greedy


def test_normalization():
    p = SamplingParams(stop="</s>", stop_token_ids=(5, 3, 5), temperature=1, max_new_tokens=16.0)
    assert p.stop == ["</s>"]
    assert p.stop_token_ids == [5, 3]
    assert isinstance(p.temperature, float) and isinstance(p.max_new_tokens, int)
    assert SamplingParams(stop=["b", "a", "b"]).stop == ["b", "a"]
    # normalizing twice (dataclasses.replace re-runs __post_init__) changes nothing
    q = dataclasses.replace(p, n=2)
    assert q.stop == ["</s>"] and q.stop_token_ids == [5, 3] and q.n == 2


def test_min_new_tokens_bounded_by_max():
    SamplingParams(max_new_tokens=4, min_new_tokens=4)
    with pytest.raises(ValueError, match="min_new_tokens"):
        SamplingParams(max_new_tokens=4, min_new_tokens=5)


def test_top_logprobs_needs_logprobs():
    with pytest.raises(ValueError, match="top_logprobs=3 needs logprobs=True"):
        SamplingParams(top_logprobs=3)
    assert SamplingParams(logprobs=True, top_logprobs=20).top_logprobs == 20


def test_is_greedy():
    assert SamplingParams(temperature=0).is_greedy
    assert SamplingParams(temperature=0.0, top_p=0.5).is_greedy
    assert SamplingParams(top_k=1).is_greedy
    assert not SamplingParams(temperature=0.7, top_k=2).is_greedy


def test_validate_after_mutation():
    p = SamplingParams()
    p.top_k = 0
    with pytest.raises(ValueError, match="top_k"):
        p.validate()


def test_from_dict_roundtrip_and_unknown_keys():
    d = {"max_new_tokens": 8, "temperature": 0.5, "stop": ["\n"], "seed": 3}
    p = SamplingParams.from_dict(d)
    assert (p.max_new_tokens, p.temperature, p.stop, p.seed) == (8, 0.5, ["\n"], 3)
    assert SamplingParams.from_dict(p.to_dict()) == p
    with pytest.raises(ValueError, match=r"unknown sampling parameter\(s\): 'max_tokens' "
                                         r"\(did you mean 'max_new_tokens'\?\)"):
        SamplingParams.from_dict({"max_tokens": 8})
    with pytest.raises(ValueError, match="'bogus'"):
        SamplingParams.from_dict({"temperature": 0.5, "bogus": 1})
    with pytest.raises(ValueError, match="object"):
        SamplingParams.from_dict([("temperature", 0.5)])
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams.from_dict({"top_p": "0.9"})
