"""Reasoning parsers (`--reasoning-parser`): split a model's `<think>...</think>` from its answer.

- qwen3: the reasoning is what lies between `<think>` and `</think>` when the output starts with
  `<think>` (Qwen3's template leaves the tag to the model; with `enable_thinking: false` in
  `chat_template_kwargs` the template writes an empty block into the prompt, the output has no tag
  and is all answer).
- deepseek-r1: the template opens `<think>` in the prompt, so the output starts inside the
  reasoning and everything up to `</think>` is reasoning (if `</think>` never comes, all of it).

Streaming: `feed(delta)` returns the (reasoning, content) text that became certain; text that could
still be the start of a tag is held until the next delta or `finish()`.
"""
from __future__ import annotations

from tessera.config.fields import register_choices

START, END = "<think>", "</think>"


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


REASONING_PARSERS = {"qwen3": False, "deepseek-r1": True}  # name -> starts inside reasoning
register_choices("reasoning_parser", lambda: sorted(REASONING_PARSERS))


def create_reasoning_parser(name: str | None, enabled: bool = True) -> ReasoningParser | None:
    """A fresh parser for one choice, or None when no parser is configured or the request turned
    separation off (`separate_reasoning: false`)."""
    if name is None or not enabled:
        return None
    return ReasoningParser(REASONING_PARSERS[name])
