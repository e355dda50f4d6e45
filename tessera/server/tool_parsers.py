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

`tool_choice: "required"` needs no parser of the model's format: its output is the JSON array the
grammar constrains it to, read as it streams by `RequiredCallsStream` (calls announced by name,
arguments sent in fragments).
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


@dataclasses.dataclass
class _StreamedCall:
    id: str
    name: str | None = None     # known once its JSON string closed
    arguments: str = ""         # the raw text of "parameters" so far
    announced: bool = False     # the delta with id and name was sent


class RequiredCallsStream:
    """Reads the JSON array `tool_choice: "required"` constrains the output to,
    `[{"name": ..., "parameters": {...}}, ...]`, as it is generated: each item is one tool call,
    announced (index, id, type, name) as soon as its name's string closes, whose arguments (the
    raw JSON text of its "parameters", as the model wrote it) follow in fragments as they come.

    A character scanner, not a JSON parser: the grammar guarantees the shape, and the scanner
    only tracks nesting, strings and which key of an item a value belongs to. Feeding the whole
    text at once gives the same calls as feeding it in pieces.
    """

    def __init__(self) -> None:
        self.calls: list[_StreamedCall] = []
        self._depth = 0           # [ and { open outside strings: 1 in the array, 2 in an item
        self._in_string = False
        self._escape = False
        self._key = ""            # the item key being read (raw JSON string body), or the last
        self._value_of: str | None = None  # the item key whose value is being read
        self._value = ""          # that value's text so far ("name" only)
        self._started = False     # the value's first character came
        self._space = ""          # whitespace inside a value, held until more value follows

    def feed(self, text: str) -> list[dict[str, Any]]:
        """OpenAI `tool_calls` delta entries for this much more text (possibly none)."""
        before = [(c.announced, len(c.arguments)) for c in self.calls]
        for ch in text:
            self._char(ch)
        deltas = []
        for i, call in enumerate(self.calls):
            if call.name is None:
                continue  # its arguments wait for its name (an item writing it second)
            was_announced, sent = before[i] if i < len(before) else (False, 0)
            if not was_announced:
                call.announced = True
                deltas.append({"index": i, "id": call.id, "type": "function",
                               "function": {"name": call.name, "arguments": call.arguments}})
            elif len(call.arguments) > sent:
                deltas.append({"index": i, "function": {"arguments": call.arguments[sent:]}})
        return deltas

    def message_calls(self) -> list[dict[str, Any]]:
        """The calls for a whole message (those whose name was complete)."""
        return [{"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in self.calls if c.name is not None]

    def _char(self, ch: str) -> None:
        if self._value_of is not None and not (self._depth == 2 and not self._in_string
                                               and ch in ",}"):
            self._value_char(ch)
            return
        if self._value_of is not None:  # the value ended at its item's , or }
            self._value_of, self._space = None, ""
        if self._in_string:  # an item's key (no other strings lie outside values)
            if not self._string_char(ch):
                self._key += ch
        elif ch == '"':
            self._in_string, self._key = True, ""
        elif ch == ":" and self._depth == 2:
            self._value_of = json.loads(f'"{self._key}"')
            self._value, self._started = "", False
        elif ch in "[{":
            self._depth += 1
            if self._depth == 2:
                self.calls.append(_StreamedCall(f"call_{uuid.uuid4().hex[:24]}"))
        elif ch in "]}":
            self._depth -= 1

    def _string_char(self, ch: str) -> bool:
        """Track escapes inside a JSON string; True when `ch` is the quote that closes it."""
        if self._escape:
            self._escape = False
        elif ch == "\\":
            self._escape = True
        elif ch == '"':
            self._in_string = False
            return True
        return False

    def _value_char(self, ch: str) -> None:
        if self._in_string:
            self._string_char(ch)
        elif ch.isspace():
            if self._started:
                self._space += ch  # inside the value, unless it ends here
            return
        elif ch == '"':
            self._in_string = True
        elif ch in "[{":
            self._depth += 1
        elif ch in "]}":
            self._depth -= 1
        text, self._space, self._started = self._space + ch, "", True
        call = self.calls[-1]
        if self._value_of == "parameters":
            call.arguments += text
        elif self._value_of == "name":
            self._value += text
            if not self._in_string and self._value.endswith('"'):  # the string closed
                call.name = json.loads(self._value)
