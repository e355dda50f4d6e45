"""Chat requests: the prompt (template, tools), the output constraint that tool_choice and
response_format imply, and each choice's output split into reasoning, content and tool calls.

tool_choice (OpenAI semantics, constrained the way vLLM constrains them):
- "none": no tools reach the template and nothing is parsed.
- "auto" (the default when tools are given): tools go to the template; the `--tool-call-parser`
  reads the calls the model chose to write in its own format (only the first one unless
  parallel_tool_calls). Without a parser this is a 400.
- "required": the output is constrained (grammar backend) to a JSON array of
  `{"name": <one of the tools>, "parameters": <its schema>}`, one item unless
  parallel_tool_calls; each item becomes a tool call whose arguments are the text the model wrote
  for "parameters" (`RequiredCallsStream`), streamed as it is generated.
- a named function: the output is constrained to that function's parameters schema and is its
  arguments, streamed as they are generated.
With a thinking model (`reasoning.thinks`) the constraint starts after `</think>`: the reasoning
goes to reasoning_content, the constrained answer to the calls or the content.
"""
from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

from tessera.server.errors import bad_request
from tessera.server.protocol import ChatCompletionRequest, NamedToolChoice
from tessera.server.reasoning import ReasoningParser
from tessera.server.tool_parsers import RequiredCallsStream, StreamingToolParser

JSON_OBJECT_SCHEMA = json.dumps({"type": "object"})


def _tool_schema(params: dict[str, Any] | None) -> dict[str, Any]:
    return params if params else {"type": "object", "properties": {}}


@dataclasses.dataclass
class ToolMode:
    kind: str                      # "none" | "auto" | "required" | "named"
    name: str | None = None        # the named function
    tools: list[dict[str, Any]] | None = None  # what the template gets
    parallel: bool = True          # parallel_tool_calls: false keeps the first call only


def tool_mode(req: ChatCompletionRequest, parser_name: str | None) -> ToolMode:
    tools = [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools or ()]
    choice = req.tool_choice if req.tool_choice is not None else ("auto" if tools else "none")
    if choice == "none" or not tools:
        return ToolMode("none")
    if isinstance(choice, NamedToolChoice):
        return ToolMode("named", choice.function.name, tools)
    if choice == "auto" and parser_name is None:
        raise bad_request("tool_choice 'auto' needs the server to be started with "
                          "--tool-call-parser (hermes, qwen25, llama3, mistral); 'required', a "
                          "named function or 'none' work without one", "tool_choice")
    return ToolMode(choice, None, tools, req.parallel_tool_calls)


def output_constraint(req: ChatCompletionRequest, mode: ToolMode
                      ) -> tuple[str, tuple[str, str]] | None:
    """(the request field that set it, (kind, text)) of the grammar the output must follow, or
    None; a 400 when two are given."""
    given = []
    if mode.kind == "named":
        fn = next(t for t in req.tools or () if t.function.name == mode.name)
        given.append(("tool_choice", ("json_schema", json.dumps(
            _tool_schema(fn.function.parameters)))))
    elif mode.kind == "required":
        items = [{"type": "object", "properties": {
            "name": {"const": t.function.name},
            "parameters": _tool_schema(t.function.parameters)},
            "required": ["name", "parameters"]} for t in req.tools or ()]
        schema: dict[str, Any] = {"type": "array", "minItems": 1,
                                  "items": {"anyOf": items} if len(items) > 1 else items[0]}
        if not req.parallel_tool_calls:
            schema["maxItems"] = 1
        given.append(("tool_choice", ("json_schema", json.dumps(schema))))
    fmt = req.response_format
    if fmt is not None and fmt.type == "json_object":
        given.append(("response_format", ("json_schema", JSON_OBJECT_SCHEMA)))
    elif fmt is not None and fmt.type == "json_schema":
        assert fmt.json_schema is not None
        given.append(("response_format", ("json_schema", json.dumps(
            fmt.json_schema.schema_ or {"type": "object"}))))
    given += req.extra_constraints()
    if len(given) > 1:
        names = " and ".join(g[0] for g in given)
        raise bad_request(f"{names}: only one output constraint per request", given[1][0])
    return given[0] if given else None


class ChatOutput:
    """One chat choice's text -> reasoning_content, content and tool calls, streamed or whole."""

    def __init__(self, mode: ToolMode, reasoning: ReasoningParser | None,
                 tool_parser: StreamingToolParser | None) -> None:
        self.mode = mode
        self.reasoning = reasoning
        self.tool_parser = tool_parser if mode.kind == "auto" else None
        self.reasoning_text = ""
        self.content = ""
        self.calls: list[dict[str, Any]] = []   # auto: OpenAI tool_calls entries
        self._raw = ""                           # named: the constrained JSON (the arguments)
        self._named_id = f"call_{uuid.uuid4().hex[:24]}"
        self._required = RequiredCallsStream() if mode.kind == "required" else None

    def feed(self, text: str) -> dict[str, Any]:
        """A delta's fields (reasoning_content / content / tool_calls), possibly empty."""
        reasoning, content = (self.reasoning.feed(text) if self.reasoning is not None
                              else ("", text))
        return self._route(reasoning, content, final=False)

    def finish(self) -> dict[str, Any]:
        reasoning, content = (self.reasoning.finish() if self.reasoning is not None
                              else ("", ""))
        return self._route(reasoning, content, final=True)

    def _route(self, reasoning: str, content: str, final: bool) -> dict[str, Any]:
        delta: dict[str, Any] = {}
        if reasoning:
            self.reasoning_text += reasoning
            delta["reasoning_content"] = reasoning
        calls: list[dict[str, Any]] = []
        if self.mode.kind == "named":
            if content:
                first = not self._raw
                self._raw += content
                call: dict[str, Any] = {"index": 0, "function": {"arguments": content}}
                if first:
                    call.update(id=self._named_id, type="function")
                    call["function"] = {"name": self.mode.name, "arguments": content}
                calls.append(call)
        elif self._required is not None:
            calls = self._required.feed(content)
        elif self.tool_parser is not None:
            text, parsed = self.tool_parser.feed(content)
            if final:
                more_text, more = self.tool_parser.finish()
                text, parsed = text + more_text, parsed + more
            content = text
            if not self.mode.parallel:  # parallel_tool_calls: false
                parsed = parsed[:max(0, 1 - len(self.calls))]
            calls = [c.to_openai(len(self.calls) + i) for i, c in enumerate(parsed)]
        if self.mode.kind in ("none", "auto") and content:
            self.content += content
            delta["content"] = content
        if calls:
            delta["tool_calls"] = calls
            if self.mode.kind == "auto":
                self.calls += calls
        return delta

    def _message_calls(self) -> list[dict[str, Any]]:
        if self.mode.kind == "named":
            return [{"id": self._named_id, "type": "function",
                     "function": {"name": self.mode.name, "arguments": self._raw}}]
        if self._required is not None:
            return self._required.message_calls()
        return [{k: v for k, v in c.items() if k != "index"} for c in self.calls]

    def message(self) -> dict[str, Any]:
        calls = self._message_calls()
        msg: dict[str, Any] = {"role": "assistant",
                               "content": self.content if self.content or not calls else None}
        if self.reasoning is not None:
            msg["reasoning_content"] = self.reasoning_text or None
        if calls:
            msg["tool_calls"] = calls
        return msg

    @property
    def has_calls(self) -> bool:
        if self.mode.kind == "named":
            return bool(self._raw)
        return bool(self._message_calls())
