"""Tool-call parsers (`--tool-call-parser`): read the tool calls a model writes in its own format.

Formats of the models tessera serves:
- hermes / qwen25 (Qwen2.5, Qwen3, Hermes): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n
  </tool_call>` blocks, any number, with free text before them.
- llama3 (Llama 3.1+ JSON tool calling): the whole output is `{"name": ..., "parameters": {...}}`
  (optionally after `<|python_tag|>`), several separated by `;`.
- mistral: `[TOOL_CALLS]` followed by a JSON list of `{"name": ..., "arguments": {...}}`.

Streaming (`StreamingToolParser`): text before the first call marker streams as content; from the
marker on, text is held and each call is emitted whole (name and complete arguments in one delta)
as soon as its block closes (hermes) or at the end of the output (llama3, mistral), which is a
delta sequence the OpenAI client assembles like any other.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from tessera.config.fields import register_choices


@dataclasses.dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
                               "function": {"name": self.name, "arguments": self.arguments}}
        if index is not None:
            out["index"] = index
        return out


def _call_from_obj(obj: Any, args_key: str) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get(args_key, obj.get("arguments", obj.get("parameters", {})))
    return ParsedCall(obj["name"], args if isinstance(args, str) else json.dumps(args))


def _between(text: str, calls: list[ParsedCall]) -> str:
    """Text around call blocks; the newlines between and after blocks are layout, not content."""
    return text if not calls or text.strip() else ""


class HermesParser:
    start, end = "<tool_call>", "</tool_call>"

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        """(content without the call blocks, calls); a block that is not valid JSON stays text."""
        calls: list[ParsedCall] = []
        content, rest = "", text
        while True:
            i = rest.find(self.start)
            if i < 0:
                return content + _between(rest, calls), calls
            j = rest.find(self.end, i)
            body = rest[i + len(self.start):j if j >= 0 else len(rest)]
            call = None
            try:
                call = _call_from_obj(json.loads(body), "arguments")
            except ValueError:
                pass
            if call is None:
                return content + rest, calls
            content += _between(rest[:i], calls)
            calls.append(call)
            rest = rest[j + len(self.end):] if j >= 0 else ""

    def complete_prefix(self, text: str) -> int:
        """Length of the prefix of held text (starting at a marker) made of closed blocks."""
        end = text.rfind(self.end)
        return end + len(self.end) if end >= 0 else 0


class Llama3JsonParser:
    start = "<|python_tag|>"

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        body = text.strip().removeprefix(self.start).strip()
        if not body.startswith("{"):
            return text, []
        calls = []
        decoder = json.JSONDecoder()
        pos = 0
        while pos < len(body):
            try:
                obj, end = decoder.raw_decode(body, pos)
            except ValueError:
                return text, []
            call = _call_from_obj(obj, "parameters")
            if call is None:
                return text, []
            calls.append(call)
            pos = end
            while pos < len(body) and body[pos] in "; \n\t":
                pos += 1
        return "", calls

    def complete_prefix(self, text: str) -> int:
        return 0  # one JSON document: parsed at the end

    def marker_at(self, text: str) -> int:
        stripped = text.lstrip()
        return len(text) - len(stripped) if stripped[:1] in ("{", "<") else -1


class MistralParser:
    start = "[TOOL_CALLS]"

    def parse(self, text: str) -> tuple[str, list[ParsedCall]]:
        i = text.find(self.start)
        if i < 0:
            return text, []
        try:
            objs = json.loads(text[i + len(self.start):].strip())
        except ValueError:
            return text, []
        objs = objs if isinstance(objs, list) else [objs]
        calls = [_call_from_obj(o, "arguments") for o in objs]
        if not calls or any(c is None for c in calls):
            return text, []
        return text[:i], [c for c in calls if c is not None]

    def complete_prefix(self, text: str) -> int:
        return 0


TOOL_PARSERS = {"hermes": HermesParser, "qwen25": HermesParser, "llama3": Llama3JsonParser,
                "mistral": MistralParser}
register_choices("tool_call_parser", lambda: sorted(TOOL_PARSERS))


def create_tool_parser(name: str) -> Any:
    return TOOL_PARSERS[name]()


class StreamingToolParser:
    """One choice's streamed text -> content deltas and whole tool calls (module docstring)."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self._held = ""        # text from the first marker on (or a possible marker's start)
        self._calling = False  # a marker was seen: everything from here is held
        self._emitted_content = False
        self.num_calls = 0

    def _marker(self, text: str) -> int:
        marker_at = getattr(self.parser, "marker_at", None)
        if marker_at is not None:
            return marker_at(text) if self.num_calls == 0 and not self._emitted_content else -1
        return text.find(self.parser.start)

    def feed(self, delta: str) -> tuple[str, list[ParsedCall]]:
        """(content that is certainly not part of a call, calls completed by this delta)."""
        text = self._held + delta
        self._held = ""
        if not self._calling:
            i = self._marker(text)
            if i < 0:
                keep = self._partial_marker(text)
                content = text[:len(text) - keep]
                self._held = text[len(text) - keep:]
                if self.num_calls and not content.strip():
                    # layout between or after calls unless text follows (HermesParser.parse)
                    self._held, content = content + self._held, ""
                self._emitted_content |= bool(content.strip())
                return content, []
            content, text = text[:i], text[i:]
            if self.num_calls and not content.strip():
                content = ""
            self._calling = True
        else:
            content = ""
        done = self.parser.complete_prefix(text)
        calls: list[ParsedCall] = []
        if done:
            rest, calls = self.parser.parse(text[:done])
            content += rest
            text = text[done:]
            self._calling = False
        self._held = text
        self.num_calls += len(calls)
        return content, calls

    def _partial_marker(self, text: str) -> int:
        start = self.parser.start
        if getattr(self.parser, "marker_at", None) is not None:
            return 0
        for n in range(min(len(start) - 1, len(text)), 0, -1):
            if text.endswith(start[:n]):
                return n
        return 0

    def finish(self) -> tuple[str, list[ParsedCall]]:
        held, self._held = self._held, ""
        if not held:
            return "", []
        content, calls = self.parser.parse(held)
        if self.num_calls and not content.strip():
            content = ""
        self.num_calls += len(calls)
        return content, calls
