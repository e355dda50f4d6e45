"""Tokenizers behind one small interface: HF tokenizers from a model directory, or the built-in
byte-level tokenizer used by presets (and by directories that carry no tokenizer files)."""
from __future__ import annotations

import logging
import os
from typing import Any, Protocol

logger = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Tokenizer(Protocol):
    eos_token_ids: set[int]
    vocab_size: int

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...
    def pieces(self, ids: list[int]) -> list[str]: ...
    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str: ...


class ByteTokenizer:
    """ids 0..255 are UTF-8 bytes; 256 <|endoftext|>, 257 <|im_start|>, 258 <|im_end|>.

    Random-weight models emit ids above 258 too: they decode to a printable ASCII character
    (33 + id % 94) so dummy-model output is readable, stable gibberish rather than nothing.
    """

    SPECIALS = {"<|endoftext|>": 256, "<|im_start|>": 257, "<|im_end|>": 258}

    def __init__(self, vocab_size: int = 512) -> None:
        self.vocab_size = vocab_size
        self.eos_token_ids = {256, 258}
        self._special_ids = {v: k for k, v in self.SPECIALS.items()}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """UTF-8 bytes, special tokens' text as their ids (there is no BOS to add)."""
        ids: list[int] = []
        i = 0
        while i < len(text):
            for tok, tid in self.SPECIALS.items():
                if text.startswith(tok, i):
                    ids.append(tid)
                    i += len(tok)
                    break
            else:
                j = min((text.find(t, i) for t in self.SPECIALS if text.find(t, i) >= 0),
                        default=len(text))
                ids.extend(text[i:j].encode("utf-8"))
                i = j
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        out = bytearray()
        for t in ids:
            if t < 256:
                out.append(t)
            elif t in self._special_ids:
                if not skip_special_tokens:
                    out.extend(self._special_ids[t].encode())
            else:
                out.append(33 + t % 94)
        return out.decode("utf-8", errors="replace")

    def pieces(self, ids: list[int]) -> list[str]:
        """Each id's vocabulary entry: its byte as text (a lone non-ASCII byte is U+FFFD), a
        special token's name."""
        return [self.decode([t], skip_special_tokens=False) for t in ids]

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        import jinja2

        return jinja2.Template(CHATML_TEMPLATE).render(messages=messages,
                                                        add_generation_prompt=True)


class HFTokenizer:
    def __init__(self, path: str) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path)
        self.vocab_size = len(self.tok)
        eos = self.tok.eos_token_id
        self.eos_token_ids = set() if eos is None else {eos}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def pieces(self, ids: list[int]) -> list[str]:
        """Each id's vocabulary entry as the tokenizer spells it ("Ġword", "▁word"), not its
        decoded text (vLLM's /tokenize token_strs)."""
        return self.tok.convert_ids_to_tokens(ids)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> str:
        """The tokenizer's own template; none is an error, not a silent ChatML (which would
        prompt a model in a format it was not trained on)."""
        if not getattr(self.tok, "chat_template", None):
            raise ValueError("this tokenizer has no chat template; pass one (--chat-template: "
                             "a file, a Jinja string, or 'chatml')")
        return self.tok.apply_chat_template(messages, tokenize=False,
                                            add_generation_prompt=True)


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: str | None, vocab_size: int, eos_token_ids: tuple[int, ...] = ()
                   ) -> Tokenizer:
    from tessera.models.presets import is_preset

    if path is None or is_preset(path) or not any(
            os.path.exists(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        if path is not None and not is_preset(path):
            logger.warning("no tokenizer files in %s: using the built-in byte-level tokenizer",
                           path)
        tok = ByteTokenizer(vocab_size)
        if path is not None and not is_preset(path):
            tok.eos_token_ids = set()  # a real checkpoint's EOS comes from its config only
    else:
        tok = HFTokenizer(path)
    tok.eos_token_ids |= set(eos_token_ids)
    return tok
