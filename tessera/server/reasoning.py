"""Reasoning parsers (`--reasoning-parser`): split a model's `<think>...</think>` from its answer.

- qwen3: the reasoning is what lies between `<think>` and `</think>` when the output starts with
  `<think>` (Qwen3's template leaves the tag to the model; with `enable_thinking: false` in
  `chat_template_kwargs` the template writes an empty block into the prompt, the output has no tag
  and is all answer).
- deepseek-r1: the template opens `<think>` in the prompt, so the output starts inside the
  reasoning and everything up to `</think>` is reasoning (if `</think>` never comes, all of it).

With an output constraint (response_format, tool_choice required or named, json_schema / regex /
ebnf) a request whose model thinks (`thinks`) gets `SamplingParams.require_reasoning`: the
constraint applies after `</think>`, to the answer only.

Streaming: `feed(delta)` returns the (reasoning, content) text that became certain; text that could
still be the start of a tag is held until the next delta or `finish()`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from tessera.config.fields import register_choices
from tessera.sampling.params import THINK_END

START, END = "<think>", THINK_END


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of `tag`."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ReasoningParser:
    """One choice's split of streamed text into reasoning and content."""

    def __init__(self, starts_in_reasoning: bool) -> None:
        # "start": before the first character (an opening tag may come); "think"; "after" (the
        # closing tag, newlines after it are dropped); "answer"
        self.state = "think" if starts_in_reasoning else "start"
        self._held = ""

    def feed(self, delta: str) -> tuple[str, str]:
        text = self._held + delta
        self._held = ""
        reasoning, content = "", ""
        while text:
            if self.state == "start":
                stripped = text.lstrip()
                if stripped.startswith(START):
                    text = stripped[len(START):]
                    self.state = "think"
                elif START.startswith(stripped):  # maybe the tag, not complete yet
                    self._held = text
                    return reasoning, content
                else:
                    self.state = "answer"
            elif self.state == "think":
                end = text.find(END)
                if end >= 0:
                    reasoning += text[:end]
                    text = text[end + len(END):]
                    self.state = "after"
                    continue
                keep = _partial_suffix(text, END)
                reasoning += text[:len(text) - keep]
                self._held = text[len(text) - keep:]
                return reasoning, content
            elif self.state == "after":  # the newlines templates put after </think> are layout
                text = text.lstrip("\n")
                if text:
                    self.state = "answer"
            else:
                content += text
                text = ""
        return reasoning, content

    def finish(self) -> tuple[str, str]:
        """Whatever is still held, at the end of the output."""
        held, self._held = self._held, ""
        if self.state == "think":
            return held, ""
        return "", held


@dataclasses.dataclass(frozen=True)
class ReasoningFormat:
    starts_in_reasoning: bool       # the template opens <think> in the prompt
    switch: str | None = None       # the chat_template_kwargs key that turns thinking off


REASONING_PARSERS = {"qwen3": ReasoningFormat(False, "enable_thinking"),
                     "deepseek-r1": ReasoningFormat(True)}
register_choices("reasoning_parser", lambda: sorted(REASONING_PARSERS))


def thinks(name: str | None, chat_template_kwargs: dict[str, Any] | None,
           continued: str = "") -> bool:
    """Whether a chat request's output opens with reasoning: a parser is configured, the request
    did not turn thinking off (Qwen3: `enable_thinking: false`; DeepSeek-R1 always thinks), and
    the assistant text the output continues (`continue_final_message`) did not close it."""
    if name is None or END in continued:
        return False
    switch = REASONING_PARSERS[name].switch
    return switch is None or (chat_template_kwargs or {}).get(switch) is not False


def create_reasoning_parser(name: str | None, enabled: bool = True) -> ReasoningParser | None:
    """A fresh parser for one choice, or None when no parser is configured or the request turned
    separation off (`separate_reasoning: false`)."""
    if name is None or not enabled:
        return None
    return ReasoningParser(REASONING_PARSERS[name].starts_in_reasoning)
