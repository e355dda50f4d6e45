"""Structured output from a reasoning model (`--reasoning-parser qwen3`): the constraint applies
to the answer after `</think>`, the reasoning before it is free and comes back as
reasoning_content; with thinking turned off the constraint starts at once.

The model (hf_models.save_think_model) has a near-uniform next token, so each request steers its
reasoning with logit_bias and presence_penalty (the penalty is subtracted from a token once it
was output): `<think>` +100 comes first, then "z" (+99.3 beats `<think>` at 98), then `</think>`
(+98.6 beats both, now at 98 and 97.3); at temperature 0.05 each margin is ~12 nats. The JSON
grammar forbids all three, so without require_reasoning none of them can appear.
"""
from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest
from hf_models import save_think_model

from tessera.server.testing import ServerProcess

MODEL = "think"
MESSAGES = [{"role": "user", "content": "Give me JSON."}]
SCHEMA = {"type": "object", "properties": {
    "n": {"type": "integer", "minimum": 0, "maximum": 99},
    "c": {"enum": ["red", "blue"]}}, "required": ["n", "c"], "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "small", "schema": SCHEMA}}
TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {
    "type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}}, "required": ["zone"],
    "additionalProperties": False}}}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    path = save_think_model(str(tmp_path_factory.mktemp("think")))
    with ServerProcess(["--model-path", path, "--served-model-name", MODEL,
                        "--kv-cache-tokens", "8192", "--reasoning-parser", "qwen3"]) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def steer(server):
    """Sampling settings that make the model think "z" before its answer (module docstring)."""
    ids = httpx.post(f"{server.base_url}/tokenize", json={
        "prompt": "<think>z</think>", "add_special_tokens": False}).json()["tokens"]
    start, z, end = ids
    return {"temperature": 0.05, "presence_penalty": 2.0, "max_tokens": 60,
            "logit_bias": {str(start): 100, str(z): 99.3, str(end): 98.6}}


def test_json_answer_after_free_reasoning(client, steer):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=4, seed=1,
                                         response_format=FORMAT, **steer)
    for choice in out.choices:
        assert choice.finish_reason == "stop"
        assert choice.message.reasoning_content == "z"
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_thinking_off_constrains_from_the_first_token(client, steer):
    out = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, n=4, seed=1, response_format=FORMAT,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **steer)
    for choice in out.choices:
        assert choice.message.reasoning_content is None  # the bias could not open a <think>
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_a_continued_message_that_closed_its_reasoning_is_all_answer(client, steer):
    messages = [*MESSAGES, {"role": "assistant", "content": "<think>z</think>"}]
    out = client.chat.completions.create(
        model=MODEL, messages=messages, n=2, seed=1, response_format=FORMAT,
        extra_body={"continue_final_message": True}, **steer)
    for choice in out.choices:
        assert choice.message.reasoning_content is None  # no second reasoning: the bias lost
        jsonschema.validate(json.loads(choice.message.content), SCHEMA)


def test_streamed_reasoning_and_answer_equal_the_whole(client, steer):
    kw = {"model": MODEL, "messages": MESSAGES, "seed": 7, "response_format": FORMAT, **steer}
    whole = client.chat.completions.create(**kw).choices[0].message
    reasoning = content = ""
    for chunk in client.chat.completions.create(**kw, stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += (delta.content or "") if delta else ""
    assert (reasoning, content) == (whole.reasoning_content, whole.content)
    jsonschema.validate(json.loads(content), SCHEMA)


def test_required_tool_call_after_reasoning(client, steer):
    out = client.chat.completions.create(model=MODEL, messages=MESSAGES, tools=[TOOL], seed=3,
                                         tool_choice="required", **steer).choices[0]
    assert out.finish_reason == "tool_calls" and out.message.reasoning_content == "z"
    (call,) = out.message.tool_calls
    assert call.function.name == "get_time"
    jsonschema.validate(json.loads(call.function.arguments), TOOL["function"]["parameters"])


def test_native_generate_takes_require_reasoning(server, steer):
    bias, params = steer["logit_bias"], {"max_new_tokens": 40, "temperature": 0.05, "seed": 2,
                                         "presence_penalty": 2.0, "regex": "[0-9]{3}"}
    r = httpx.post(f"{server.base_url}/generate", timeout=60, json={
        "text": "x", "require_reasoning": True,
        "sampling_params": {**params, "logit_bias": bias}})
    assert r.status_code == 200, r.text
    assert re.fullmatch("<think>z</think>[0-9]{3}", r.json()["text"]), r.json()["text"]
    # the same request without it: the regex holds from the first token
    r = httpx.post(f"{server.base_url}/generate", timeout=60, json={
        "text": "x", "sampling_params": {**params, "logit_bias": bias}})
    assert re.fullmatch("[0-9]{3}", r.json()["text"]), r.json()["text"]
