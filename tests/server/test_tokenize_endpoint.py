"""vLLM's /tokenize and /detokenize behaviours (its test_tokenization.py's assertions, written
anew): chat messages with tools, continue_final_message and add_generation_prompt rendered as the
chat endpoint renders them; token_strs null unless asked for. The byte tokenizer (one id per byte)
with a small inline template that shows the tools, so the expected ids are the bytes."""
from __future__ import annotations

import httpx
import pytest

from tessera.server.testing import ServerProcess

TEMPLATE = ("{% if tools %}[tools:{% for t in tools %}{{ t.function.name }};{% endfor %}]"
            "{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>"
            "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
TOOLS = [{"type": "function", "function": {
    "name": "get_weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]


@pytest.fixture(scope="module")
def server():
    with ServerProcess(["--kv-cache-tokens", "4096", "--chat-template", TEMPLATE]) as s:
        yield s


def _tokenize(server, **body):
    r = httpx.post(f"{server.base_url}/tokenize", json={"model": "tiny-qwen3", **body}, timeout=30)
    return r


def _ids(text: str) -> list[int]:
    return list(text.encode())


def test_prompt_tokens_count_and_null_token_strs(server):
    out = _tokenize(server, prompt="This is a test prompt.").json()
    assert out["tokens"] == _ids("This is a test prompt.") and out["count"] == 22
    assert out["max_model_len"] > 0 and out["token_strs"] is None
    strs = _tokenize(server, prompt="ab", return_token_strs=True).json()["token_strs"]
    assert strs == ["a", "b"]
    back = httpx.post(f"{server.base_url}/detokenize",
                      json={"tokens": _ids("This is a test prompt.")}).json()
    assert back == {"prompt": "This is a test prompt."}


@pytest.mark.parametrize("with_tools", [False, True])
def test_chat_tokenize_follows_the_template_options(server, with_tools):
    head = "[tools:get_weather;]" if with_tools else ""
    extra = {"tools": TOOLS} if with_tools else {}
    conv = [{"role": "user", "content": "Hi there!"},
            {"role": "assistant", "content": "Nice to meet you!"},
            {"role": "user", "content": "A question?"}]
    body = head + "<user>Hi there!</user><assistant>Nice to meet you!</assistant>" \
                  "<user>A question?</user>"
    for add_generation in (False, True):
        out = _tokenize(server, messages=conv, add_generation_prompt=add_generation,
                        **extra).json()
        want = _ids(body + ("<assistant>" if add_generation else ""))
        assert out["tokens"] == want and out["count"] == len(want)
    # the last, assistant message is continued: its closing tag is not rendered
    cont = _tokenize(server, messages=[*conv, {"role": "assistant", "content": "Sure,"}],
                     continue_final_message=True, add_generation_prompt=False, **extra).json()
    assert cont["tokens"] == _ids(body + "<assistant>Sure,")
    both = _tokenize(server, messages=[*conv, {"role": "assistant", "content": "Sure,"}],
                     continue_final_message=True, add_generation_prompt=True)
    assert both.status_code == 400 and "continue_final_message" in both.text
    not_assistant = _tokenize(server, messages=conv, continue_final_message=True)
    assert not_assistant.status_code == 400


def test_chat_tokenize_equals_the_chat_prompt(server):
    conv = [{"role": "user", "content": "Weather?"}]
    ids = _tokenize(server, messages=conv, tools=TOOLS).json()["tokens"]
    usage = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=60, json={
        "model": "tiny-qwen3", "messages": conv, "tools": TOOLS, "tool_choice": "required",
        "max_tokens": 1}).json()["usage"]
    assert usage["prompt_tokens"] == len(ids)
