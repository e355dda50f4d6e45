"""Incremental detokenization with stop strings: token ids in, safe text deltas out.

Two things make streaming text harder than `decode(all_ids)[len(previous):]`:
- A character can span several tokens (byte-level BPE, byte fallback, ByteTokenizer's one byte per
  token). Decoding half of it yields U+FFFD; such text is held back until the character completes.
- A stop string can arrive split over tokens ("</ans" + "wer>"). Text that could still turn out to
  be the start of a stop string is held back; when one completes, the output is cut before it.

Cost per step is independent of the output length: only a window of recent tokens is decoded
(vLLM's prefix/read offsets). `ids[prefix:read]` was decoded last time and is re-decoded as context,
because tokenizers render a token differently at the start of a sequence (SentencePiece drops the
leading space) and the length difference is what is new.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

_REPLACEMENT = "\ufffd"
# A UTF-8 character is at most 4 bytes. When more tokens than this were already held before an
# `add` and the text still ends in U+FFFD, the held tokens are either complete characters followed
# by an unfinished one (tokens that straddle character boundaries, as byte-level BPE's do, can keep
# every `add` ending mid-character) or genuinely invalid bytes: the complete characters are
# released and only the unfinished tail is held; with no complete character at all, everything is
# released as a full decode would show it, rather than re-decoding an ever-growing window.
_MAX_HELD_TOKENS = 6


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    """Turns one request's output tokens into text deltas; see the module docstring.

    `text` is everything returned so far by `add` and `flush` (their concatenation). After a stop
    string, `stopped` is True, `stop_reason` is that string, `text` ends right before it, and later
    tokens are ignored.
    """

    def __init__(self, tokenizer: Decoder, stop: Sequence[str] | None = None,
                 skip_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.stop = list(dict.fromkeys(s for s in (stop or ()) if s))
        self.skip_special_tokens = skip_special_tokens
        self.token_ids: list[int] = []
        self.stopped = False
        self.stop_reason: str | None = None
        self._max_stop_len = max((len(s) for s in self.stop), default=0)
        self._prefix_offset = 0  # ids[prefix:read] is decoded again as context for new tokens
        self._read_offset = 0    # ids[read:] are not yet part of `_decoded`
        self._decoded = ""       # text of ids[:read], complete characters only
        self._emitted = 0        # len of `_decoded` already returned

    @property
    def text(self) -> str:
        return self._decoded[:self._emitted]

    def add(self, token_ids: Sequence[int]) -> str:
        """Append tokens; return the text that became safe to show (possibly "")."""
        if self.stopped:
            return ""
        stale = len(self.token_ids) - self._read_offset > _MAX_HELD_TOKENS
        self.token_ids.extend(token_ids)
        searched = len(self._decoded)
        self._decoded += self._decode_new(final=False, stale=stale)
        return self._release(searched, final=False)

    def flush(self) -> str:
        """At the end of the request: return everything still held back, except what lies at or
        after a stop string. Incomplete characters come out as U+FFFD, as a full decode would."""
        if self.stopped:
            return ""
        searched = len(self._decoded)
        self._decoded += self._decode_new(final=True, stale=True)
        return self._release(searched, final=True)

    # ---- internals -------------------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip_special_tokens)

    def _decode_new(self, final: bool, stale: bool) -> str:
        """Text the tokens after the read offset add; "" while they end mid-character, and then
        they stay held for the next call. `final`: release everything; `stale` (held too long):
        release the complete characters (see _MAX_HELD_TOKENS)."""
        ids = self.token_ids
        if self._read_offset >= len(ids):
            return ""
        context = self._decode(ids[self._prefix_offset:self._read_offset])
        window = self._decode(ids[self._prefix_offset:])
        if not (final or self._complete(window, context)):
            if not stale:
                return ""
            # the longest run of held tokens that ends on a complete character, if any
            for end in range(len(ids) - 1, self._read_offset, -1):
                part = self._decode(ids[self._prefix_offset:end])
                if self._complete(part, context):
                    self._prefix_offset, self._read_offset = self._read_offset, end
                    return part[len(context):]
        self._prefix_offset, self._read_offset = self._read_offset, len(ids)
        return window[len(context):]

    @staticmethod
    def _complete(window: str, context: str) -> bool:
        return len(window) > len(context) and not window.endswith(_REPLACEMENT)

    def _release(self, searched: int, final: bool) -> str:
        """Emit up to the first stop string, or up to what could still start one.

        Text before `searched` was already checked, so a new match must end after it; and nothing
        that could begin a stop string was emitted, so a match cannot start before `_emitted`.
        """
        text = self._decoded
        start = max(self._emitted, searched - self._max_stop_len + 1)
        hit = min(((pos, s) for s in self.stop if (pos := text.find(s, start)) >= 0),
                  default=None, key=lambda h: h[0])
        if hit is not None:
            end = hit[0]
            self.stopped, self.stop_reason = True, hit[1]
            self._decoded = text[:end]
        elif final:
            end = len(text)
        else:
            end = len(text) - self._partial_stop_len()
        delta = text[self._emitted:end]
        self._emitted = end
        return delta

    def _partial_stop_len(self) -> int:
        """Length of the longest unemitted suffix that is a proper prefix of some stop string."""
        text = self._decoded
        available = len(text) - self._emitted
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, available), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best
