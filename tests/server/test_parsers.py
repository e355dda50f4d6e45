"""Tool-call and reasoning parsers, whole and streamed in every chunking, and chat templates
(--chat-template sources, the missing-template 400)."""
from __future__ import annotations

import json

import pytest

from tessera.models.tokenizer import ByteTokenizer
from tessera.server.chat_template import ChatTemplate, load_template_source
from tessera.server.errors import APIError
from tessera.server.reasoning import ReasoningParser
from tessera.server.tool_parsers import (
    RequiredCallsStream,
    StreamingToolParser,
    create_tool_parser,
)

HERMES = ('I will look.<tool_call>\n{"name": "f", "arguments": {"x": 1}}\n</tool_call>\n'
          '<tool_call>\n{"name": "g", "arguments": {}}\n</tool_call>')
LLAMA3 = '<|python_tag|>{"name": "f", "parameters": {"x": 1}}; {"name": "g", "parameters": {}}'
MISTRAL = 'Sure [TOOL_CALLS] [{"name": "f", "arguments": {"x": 1}}, {"name": "g", "arguments": {}}]'
CASES = [("hermes", HERMES, "I will look."), ("llama3", LLAMA3, ""),
         ("mistral", MISTRAL, "Sure ")]


def stream(parser_name: str, text: str, chunk: int) -> tuple[str, list[tuple[str, dict]]]:
    parser = StreamingToolParser(create_tool_parser(parser_name))
    content, calls = "", []
    for i in range(0, len(text), chunk):
        c, new = parser.feed(text[i:i + chunk])
        content += c
        calls += new
    c, new = parser.finish()
    return content + c, [(call.name, json.loads(call.arguments)) for call in calls + new]


@pytest.mark.parametrize(("name", "text", "content"), CASES)
@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_tool_parsers_whole_and_streamed(name, text, content, chunk):
    assert stream(name, text, chunk) == (content, [("f", {"x": 1}), ("g", {})])


@pytest.mark.parametrize("name", ["hermes", "llama3", "mistral"])
def test_text_without_calls_stays_content(name):
    for text in ("just an answer", "<tool_call>not json</tool_call>", "{not a call}"):
        assert stream(name, text, 2) == (text, [])


@pytest.mark.parametrize("chunk", [1, 2, 5, 100])
def test_reasoning_parsers(chunk):
    for starts_inside, text, expected in [
            (False, "<think>plan it</think>\n\nthe answer", ("plan it", "the answer")),
            (False, "no thinking here", ("", "no thinking here")),
            (True, "plan it</think>the answer", ("plan it", "the answer")),
            (True, "never closed", ("never closed", ""))]:
        parser = ReasoningParser(starts_inside)
        parts = [parser.feed(text[i:i + chunk]) for i in range(0, len(text), chunk)]
        parts.append(parser.finish())
        assert ("".join(p[0] for p in parts), "".join(p[1] for p in parts)) == expected


REQUIRED = [
    ('[{"name":"f","parameters":{"x":[1,{"s":"}],\\""}]}},{"name":"g","parameters":{}}]',
     [("f", '{"x":[1,{"s":"}],\\""}]}'), ("g", "{}")]),
    # spaces, the keys the other way round, an escaped name, a scalar "parameters"
    ('[ {"parameters" : {"a": 1} , "name": "h\\u00e9"} , {"name":"k","parameters":5}]',
     [("h\u00e9", '{"a": 1}'), ("k", "5")]),
    ('[{"name":"f","parameters":{"x":', [("f", '{"x":')]),  # cut short: what came so far
]


@pytest.mark.parametrize(("text", "expected"), REQUIRED)
@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_required_calls_stream(text, expected, chunk):
    parser = RequiredCallsStream()
    calls: dict[int, list[str]] = {}
    for i in range(0, len(text), chunk):
        for delta in parser.feed(text[i:i + chunk]):
            fn = delta["function"]
            if "id" in delta:  # a call's first delta: id, type and the complete name
                assert delta["index"] not in calls and delta["type"] == "function"
                calls[delta["index"]] = [fn["name"], ""]
            calls[delta["index"]][1] += fn["arguments"]
    assert [tuple(calls[i]) for i in sorted(calls)] == expected
    whole = [(c["function"]["name"], c["function"]["arguments"]) for c in parser.message_calls()]
    assert whole == expected


def test_chat_template_sources(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}]{{ m.content }}{% endfor %}")
    assert load_template_source(str(path)) == path.read_text()
    assert load_template_source("{{ messages[0].content }}") == "{{ messages[0].content }}"
    assert "<|im_start|>" in load_template_source("chatml")
    with pytest.raises(ValueError, match="neither a file"):
        load_template_source("no-such-file.jinja")
    template = ChatTemplate(ByteTokenizer(), str(path))
    ids = template.render_ids([{"role": "user", "content": "hi"}], None)
    assert ByteTokenizer().decode(ids) == "[user]hi"


def test_missing_template_is_a_400_that_says_what_to_do():
    class NoTemplate:
        tok = type("HF", (), {"chat_template": None})()

    with pytest.raises(APIError) as err:
        ChatTemplate(NoTemplate()).render_ids([{"role": "user", "content": "hi"}], None)
    assert err.value.status == 400 and "--chat-template" in err.value.message
