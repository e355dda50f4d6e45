"""Chat templates: which one a server uses, and rendering a conversation to prompt token ids.

The template is chosen once at start-up: `--chat-template` (a Jinja file, an inline Jinja string,
or "chatml"), else the tokenizer's own (`chat_template` of an HF tokenizer; the built-in byte
tokenizer's is ChatML, whose special tokens it has). A tokenizer without one is logged at start-up
and chat requests are refused with a 400 that says to pass `--chat-template`: a silent fallback
would prompt the model in a format it was never trained on.

Token ids are rendered the way HF's `apply_chat_template(tokenize=True)` does: the template's text
is encoded WITHOUT the tokenizer's own special tokens, so a template that writes `{{ bos_token }}`
(Llama 3) gets one BOS, not a second one from the tokenizer's post-processor.
"""
from __future__ import annotations

import logging
import os
from typing import Any

from tessera.models.tokenizer import CHATML_TEMPLATE, ByteTokenizer
from tessera.server.errors import bad_request

logger = logging.getLogger(__name__)


def load_template_source(value: str) -> str:
    """`--chat-template`: 'chatml', a file's contents, or the string itself if it is Jinja."""
    if value == "chatml":
        return CHATML_TEMPLATE
    if os.path.isfile(value):
        with open(value, encoding="utf-8") as f:
            return f.read()
    if "{{" in value or "{%" in value:
        return value
    raise ValueError(f"--chat-template {value!r} is neither a file, nor a Jinja template, nor "
                     "'chatml'")


class ChatTemplate:
    """Renders conversations for one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer: Any, override: str | None = None) -> None:
        self.tokenizer = tokenizer
        if override is not None:
            self.template: str | None = load_template_source(override)
            self.source = "--chat-template"
        elif isinstance(tokenizer, ByteTokenizer):
            self.template, self.source = CHATML_TEMPLATE, "the byte tokenizer's ChatML"
        else:
            hf = getattr(tokenizer, "tok", None)
            self.template = getattr(hf, "chat_template", None) or None
            self.source = "the tokenizer's chat_template"
        if self.template is None:
            logger.warning("the tokenizer has no chat template: /v1/chat/completions answers 400 "
                           "unless the server is started with --chat-template (a file, a Jinja "
                           "string, or 'chatml')")
        else:
            logger.info("chat template: %s", self.source)

    def _special_tokens(self) -> dict[str, Any]:
        hf = getattr(self.tokenizer, "tok", None)
        if hf is None:
            return {}
        return {"bos_token": hf.bos_token, "eos_token": hf.eos_token,
                "unk_token": hf.unk_token, "pad_token": hf.pad_token}

    def render_text(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    add_generation_prompt: bool = True, continue_final_message: bool = False,
                    kwargs: dict[str, Any] | None = None) -> str:
        """The prompt text; a 400 if there is no template or the template rejects the input."""
        if self.template is None:
            raise bad_request("this model's tokenizer has no chat template; start the server "
                              "with --chat-template (a file, a Jinja string, or 'chatml'), or "
                              "use /v1/completions", "messages")
        from transformers.utils.chat_template_utils import render_jinja_template

        extra = {**self._special_tokens(), **(kwargs or {})}
        try:
            rendered, _ = render_jinja_template(
                conversations=[messages], tools=tools, chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message, **extra)
        except Exception as e:  # noqa: BLE001 - templates raise whatever they like
            raise bad_request(f"messages: the chat template rejected them: {e}",
                              "messages") from None
        return rendered[0]

    def render_ids(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                   add_generation_prompt: bool = True, continue_final_message: bool = False,
                   kwargs: dict[str, Any] | None = None) -> list[int]:
        """Prompt token ids, as HF's apply_chat_template(tokenize=True) gives them."""
        text = self.render_text(messages, tools, add_generation_prompt, continue_final_message,
                                kwargs)
        return self.tokenizer.encode(text, add_special_tokens=False)
