"""Structured output, tool calls and logit_bias against a real `tessera serve`
(tiny-qwen3, random weights, on CPU) through the official openai client.

A random model follows no format on its own, so every format here holds only because the grammar
mask forbids everything else: these tests fail if the mask is not applied, applied to the wrong
rows, or the matcher is not advanced.
"""
from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from tessera.server.testing import ServerProcess

MODEL = "tiny-qwen3"
SERVER_ARGS = ["--kv-cache-tokens", "32768", "--max-running-requests", "256",
               "--tool-call-parser", "hermes"]
MESSAGES = [{"role": "user", "content": "Give me JSON."}]
# short outputs (a few tokens per field): 200 samples stay fast on a CPU
SMALL_SCHEMA = {"type": "object", "properties": {
    "n": {"type": "integer", "minimum": 0, "maximum": 99},
    "c": {"enum": ["red", "blue"]}}, "required": ["n", "c"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"enum": ["Paris", "Oslo"]}, "days": {"type": "integer", "minimum": 1,
                                                      "maximum": 7}},
        "required": ["city", "days"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "properties": {
        "zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"], "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server():
    with ServerProcess(SERVER_ARGS) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def test_json_schema_is_valid_in_200_samples(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL_SCHEMA,
                                                  "strict": True}}
    texts = []
    for seed in (0, 1000):  # sample k of a request is seeded seed + k: 200 distinct seeds
        out = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=100,
                                             temperature=1.0, seed=seed, max_tokens=40,
                                             response_format=fmt)
        assert all(c.finish_reason == "stop" for c in out.choices)
        texts += [c.message.content for c in out.choices]
    for text in texts:
        jsonschema.validate(json.loads(text), SMALL_SCHEMA)
    assert len(set(texts)) > 20  # temperature 1.0 explores the schema, not one answer


def test_json_object_parses(client):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=12, temperature=1.0,
                                         seed=3, max_tokens=1500,
                                         response_format={"type": "json_object"})
    for c in out.choices:
        assert c.finish_reason == "stop"
        assert isinstance(json.loads(c.message.content), dict)


def test_regex_and_ebnf_on_completions(client):
    pattern = r"[a-z]{2,6}-\d{2}"
    out = client.completions.create(model=MODEL, prompt="id:", n=16, temperature=1.0, seed=5,
                                    max_tokens=20, extra_body={"regex": pattern})
    assert all(re.fullmatch(pattern, c.text) for c in out.choices), [c.text for c in out.choices]
    ebnf = 'root ::= "yes" | "no" | "maybe " [0-9]'
    out = client.completions.create(model=MODEL, prompt="q:", n=16, temperature=1.0, seed=6,
                                    max_tokens=20, extra_body={"ebnf": ebnf})
    assert all(re.fullmatch(r"yes|no|maybe \d", c.text) for c in out.choices)


def test_streamed_constrained_output_equals_the_whole(client):
    kw = {"model": MODEL, "prompt": "s", "temperature": 1.0, "seed": 11, "max_tokens": 30,
          "extra_body": {"json_schema": json.dumps(SMALL_SCHEMA)}}
    whole = client.completions.create(**kw).choices[0].text
    streamed = "".join(c.choices[0].text for c in client.completions.create(**kw, stream=True)
                       if c.choices)
    assert streamed == whole
    jsonschema.validate(json.loads(whole), SMALL_SCHEMA)


def test_stop_string_inside_a_constrained_output(client):
    kw = {"model": MODEL, "prompt": "s", "temperature": 1.0, "seed": 11, "max_tokens": 30,
          "extra_body": {"json_schema": json.dumps(SMALL_SCHEMA)}}
    whole = client.completions.create(**kw).choices[0].text
    cut = client.completions.create(**kw, stop=['"c"']).choices[0]
    assert cut.finish_reason == "stop" and cut.text == whole[:whole.index('"c"')]


def test_native_generate_takes_sglang_constraint_fields(server):
    r = httpx.post(f"{server.base_url}/generate", timeout=60, json={
        "text": "x", "sampling_params": {"max_new_tokens": 20, "temperature": 1.0, "seed": 2,
                                         "regex": "(ab|cd){2}"}})
    assert r.status_code == 200, r.text
    assert re.fullmatch("(ab|cd){2}", r.json()["text"])


def test_named_tool_choice_gives_schema_valid_arguments(client):
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=[WEATHER, TIME], n=8, temperature=1.0, seed=1,
        max_tokens=60, tool_choice={"type": "function", "function": {"name": "get_weather"}})
    for c in out.choices:
        (call,) = c.message.tool_calls
        assert call.function.name == "get_weather" and call.id
        jsonschema.validate(json.loads(call.function.arguments),
                            WEATHER["function"]["parameters"])


def test_required_tool_choice_calls_declared_functions(client):
    schemas = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, TIME)}
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, tools=[WEATHER, TIME], tool_choice="required", n=8,
        temperature=1.0, seed=4, max_tokens=200, parallel_tool_calls=False)
    names = set()
    for c in out.choices:
        assert c.finish_reason == "tool_calls"
        (call,) = c.message.tool_calls  # parallel_tool_calls=False: exactly one
        jsonschema.validate(json.loads(call.function.arguments), schemas[call.function.name])
        names.add(call.function.name)
    assert names == {"get_weather", "get_time"}


def test_streamed_tool_calls_reassemble_with_the_openai_client(client):
    # a forced tool call, streamed: the client's stream helper assembles the deltas
    kw = {"model": MODEL, "messages": MESSAGES, "tools": [WEATHER], "temperature": 1.0,
          "seed": 9, "max_tokens": 60,
          "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    assert call.function.arguments == whole.function.arguments


def test_auto_tool_calls_in_the_hermes_format(client):
    # the model's own format (what --tool-call-parser hermes reads), forced by an EBNF grammar
    ebnf = ('root ::= "Let me check.<tool_call>\\n{\\"name\\": \\"get_weather\\", '
            '\\"arguments\\": {\\"city\\": \\"" ("Paris" | "Oslo") "\\", \\"days\\": " [1-7] '
            '"}}\\n</tool_call>"')
    kw = {"model": MODEL, "messages": MESSAGES, "tools": [WEATHER], "temperature": 1.0,
          "seed": 2, "max_tokens": 120, "extra_body": {"ebnf": ebnf}}
    msg = client.chat.completions.create(**kw).choices[0]
    assert msg.finish_reason == "tool_calls" and msg.message.content == "Let me check."
    (call,) = msg.message.tool_calls
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion().choices[0]
    assert final.message.content == "Let me check."
    assert final.message.tool_calls[0].function.arguments == call.function.arguments


def test_parallel_tool_calls_false_keeps_the_first_call(client):
    block = ('"<tool_call>\\n{\\"name\\": \\"get_time\\", \\"arguments\\": {\\"zone\\": '
             '\\"" ("UTC" | "CET") "\\"}}\\n</tool_call>"')
    kw = {"model": MODEL, "messages": MESSAGES, "tools": [TIME], "temperature": 1.0, "seed": 2,
          "max_tokens": 200, "extra_body": {"ebnf": f"root ::= {block} {block}"}}
    assert len(client.chat.completions.create(**kw).choices[0].message.tool_calls) == 2
    one = client.chat.completions.create(**kw, parallel_tool_calls=False).choices[0].message
    assert len(one.tool_calls) == 1 and one.tool_calls[0].function.name == "get_time"


def test_logit_bias_forces_and_forbids_tokens(client, server):
    kw = {"model": MODEL, "prompt": "bias", "max_tokens": 6, "temperature": 1.0, "seed": 1,
          "extra_body": {"ignore_eos": True}}
    forced = client.completions.create(**kw, logit_bias={"65": 100}).choices[0].text
    assert forced == "A" * 6  # byte tokenizer: token 65 is "A"
    greedy = httpx.post(f"{server.base_url}/generate", timeout=60, json={
        "text": "bias", "sampling_params": {"max_new_tokens": 1, "temperature": 0}}).json()
    first = greedy["output_ids"][0]
    banned = httpx.post(f"{server.base_url}/generate", timeout=60, json={
        "text": "bias", "sampling_params": {"max_new_tokens": 1, "temperature": 0,
                                            "logit_bias": {str(first): -100}}}).json()
    assert banned["output_ids"][0] != first


def _assemble(chunks: list, n: int) -> tuple[list[list[tuple[str, str]]], list[list], list]:
    """Per choice: the calls (name, arguments) its tool_calls deltas concatenate to, the deltas
    themselves, and its finish_reason."""
    deltas: list[list] = [[] for _ in range(n)]
    finish: list = [None] * n
    for chunk in chunks:
        for choice in chunk.choices:
            deltas[choice.index] += choice.delta.tool_calls or []
            finish[choice.index] = choice.finish_reason or finish[choice.index]
    calls = []
    for ds in deltas:
        by_index: dict[int, list[str]] = {}
        for d in ds:
            if d.index not in by_index:  # a call's first delta names it, later ones do not
                assert d.id and d.type == "function" and d.function.name, d
                by_index[d.index] = [d.function.name, ""]
            else:
                assert d.id is None and d.function.name is None, d
            by_index[d.index][1] += d.function.arguments or ""
        calls.append([tuple(c) for _, c in sorted(by_index.items())])
    return calls, deltas, finish


NAMED = {"type": "function", "function": {"name": "get_weather"}}


@pytest.mark.parametrize(("tool_choice", "parallel"),
                         [("required", True), ("required", False), (NAMED, True)],
                         ids=["required", "required-not-parallel", "named"])
def test_forced_tool_calls_stream_as_they_are_generated(client, tool_choice, parallel):
    kw = {"model": MODEL, "messages": MESSAGES, "tools": [WEATHER, TIME], "n": 3,
          "tool_choice": tool_choice, "temperature": 1.0, "seed": 1, "max_tokens": 300,
          "parallel_tool_calls": parallel}
    whole = client.chat.completions.create(**kw)
    expected = [[(c.function.name, c.function.arguments) for c in ch.message.tool_calls]
                for ch in whole.choices]
    calls, deltas, finish = _assemble(list(client.chat.completions.create(**kw, stream=True)),
                                      kw["n"])
    assert calls == expected
    assert finish == ["tool_calls"] * kw["n"]
    for choice_calls, ds in zip(calls, deltas):
        for index, (name, arguments) in enumerate(choice_calls):
            fragments = [d for d in ds if d.index == index and d.function.arguments]
            assert len(fragments) >= 5, (name, arguments)  # several deltas, not one at the end
    counts = [len(c) for c in calls]
    if tool_choice == "required" and parallel:
        assert max(counts) > 1
    else:  # parallel_tool_calls false, or a named function: one call
        assert counts == [1] * kw["n"]
    # the openai client's own stream helper assembles the same calls
    with client.chat.completions.stream(**kw) as stream:
        final = stream.get_final_completion()
    assert [[(c.function.name, c.function.arguments) for c in ch.message.tool_calls]
            for ch in final.choices] == expected
