"""Structured output: compile a request's grammar off the hot path, track where its output is.

Backends (`--grammar-backend`): "xgrammar" (default, the backend SGLang and vLLM default to) and
"none" (requests with a constraint are refused). A request's constraint is one of
`SamplingParams.json_schema / regex / ebnf`.

Compiling (a JSON schema against a 150k-token vocabulary takes milliseconds to seconds) runs on a
worker thread: `add_request` starts it and the scheduler admits the request once it is done, so
the scheduling loop never waits for a compile. Compiled grammars are cached by (kind, text): the n
samples of a request, and repeated schemas, compile once.

Per request a `RequestGrammar` holds an xgrammar matcher: the engine fills the step's token bitmask
for all grammar rows in one batched call (`XGrammarBackend.fill_bitmask`, C++ threads) after the
forward was launched, so it runs while the device computes, and feeds each matcher every token its
request outputs. The matcher lives on the request, so retraction (which recomputes KV,
not tokens) and the prefix cache (which shares KV, not sampling state) leave it untouched.

Reasoning models (`SamplingParams.require_reasoning`): the request's grammar waits for the
think-end token (`</think>`, one token of the vocabulary: `think_end_token_id`). Until the request
samples it, its bitmask row stays all-ones and its matcher is not fed; that token is not fed
either; from the next token on, decoding follows the grammar as usual.
"""
from __future__ import annotations

import collections
import concurrent.futures
import logging
from collections.abc import Iterable
from typing import Any

import torch

from tessera.config.fields import register_choices
from tessera.sampling.params import THINK_END

logger = logging.getLogger(__name__)

GRAMMAR_BACKENDS = ("xgrammar", "none")
register_choices("grammar_backend", lambda: list(GRAMMAR_BACKENDS))
# Compiled grammars kept for reuse (each holds a per-token table; a few MB for a large vocab).
_CACHE_ENTRIES = 256


def xgrammar_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("xgrammar") is not None


def check_grammar(kind: str, text: str) -> None:
    """Parse a constraint without a tokenizer (fast); ValueError naming `kind` if invalid."""
    import xgrammar as xgr

    try:
        if kind == "json_schema":
            xgr.Grammar.from_json_schema(text, any_whitespace=False)
        elif kind == "regex":
            xgr.Grammar.from_regex(text)
        elif kind == "ebnf":
            xgr.Grammar.from_ebnf(text)
        else:
            raise ValueError(f"unknown constraint kind {kind!r}")
    except RuntimeError as e:
        # xgrammar's messages start with a C++ source location: keep the part a user can act on
        message = str(e).strip().splitlines()[0]
        message = message.split(": ", 1)[1] if ".cc:" in message else message
        raise ValueError(f"{kind} is invalid: {message}") from None


def think_end_token_id(tokenizer: Any) -> int | None:
    """The id of `</think>` when the tokenizer has it as one token (Qwen3, DeepSeek-R1 do), else
    None: then a constraint cannot be started after the reasoning."""
    ids = tokenizer.encode(THINK_END, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


def _tokenizer_info(tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]) -> Any:
    import xgrammar as xgr

    from tessera.models.tokenizer import ByteTokenizer

    stop = sorted(stop_ids)
    if isinstance(tokenizer, ByteTokenizer):
        # byte ids are their byte; specials are empty (xgrammar never allows them as text);
        # ids above decode to one printable character (ByteTokenizer.decode)
        specials = set(ByteTokenizer.SPECIALS.values())
        vocab = [bytes([i]) if i < 256 else b"" if i in specials else
                 tokenizer.decode([i]).encode() for i in range(vocab_size)]
        return xgr.TokenizerInfo(vocab, vocab_size=vocab_size, stop_token_ids=stop)
    return xgr.TokenizerInfo.from_huggingface(tokenizer.tok, vocab_size=vocab_size,
                                              stop_token_ids=stop)


class XGrammarBackend:
    """Compiles constraints for one tokenizer on a worker thread, with a cache."""

    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Iterable[int]) -> None:
        import xgrammar as xgr

        self.vocab_size = vocab_size
        self.compiler = xgr.GrammarCompiler(_tokenizer_info(tokenizer, vocab_size, stop_ids),
                                            max_threads=2, cache_enabled=False)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "grammar-compile")
        # fills a batch's rows in C++ threads, without the GIL
        self._batch = xgr.BatchGrammarMatcher(max_threads="auto")
        self._cache: collections.OrderedDict[tuple[str, str], concurrent.futures.Future] = (
            collections.OrderedDict())
        # the host masks of `batch_bitmask`: two buffers used in turn, grown to the largest batch
        self._host_masks: list[torch.Tensor | None] = [None, None]
        self._next_mask = 0

    def compile(self, kind: str, text: str) -> concurrent.futures.Future:
        """Future of the compiled grammar; the same future for the same (kind, text)."""
        key = (kind, text)
        future = self._cache.get(key)
        if future is not None and not (future.done() and future.exception() is not None):
            self._cache.move_to_end(key)
            return future
        future = self._executor.submit(self._compile, kind, text)
        self._cache[key] = future
        while len(self._cache) > _CACHE_ENTRIES:
            self._cache.popitem(last=False)
        return future

    def _compile(self, kind: str, text: str) -> Any:
        if kind == "json_schema":
            # compact JSON: free whitespace lets a weak model emit "\n\n\n..." forever
            return self.compiler.compile_json_schema(text, any_whitespace=False)
        if kind == "regex":
            return self.compiler.compile_regex(text)
        return self.compiler.compile_grammar(text)

    def request_grammar(self, kind: str, text: str,
                        think_end_id: int | None = None) -> RequestGrammar:
        """A request's grammar; with `think_end_id` it starts after that token (module doc)."""
        return RequestGrammar(self.compile(kind, text), think_end_id)

    def batch_bitmask(self, num_rows: int, rows: list[int], grammars: list[RequestGrammar],
                      pin: bool) -> torch.Tensor:
        """The host mask [num_rows, ceil(V / 32)] int32 of a batch: row rows[i] = what
        grammars[i] allows next (one batched fill), every other row all ones.

        Written into one of two persistent host buffers (pinned when `pin`, for the copy to the
        device), used in turn: no allocation and no whole-mask reset per step, only the rows no
        grammar fills are reset. Taking turns is what makes the reuse safe: the engine reads a
        step's tokens, which the device samples after copying that step's mask, before it fills
        the mask of the step after next."""
        words = (self.vocab_size + 31) // 32
        slot = self._next_mask
        self._next_mask ^= 1
        buf = self._host_masks[slot]
        if buf is None or buf.shape[0] < num_rows or buf.is_pinned() != pin:
            buf = torch.empty((max(num_rows, 1), words), dtype=torch.int32, pin_memory=pin)
            self._host_masks[slot] = buf
        mask = buf[:num_rows]
        filled = set(rows)
        for r in range(num_rows):
            if r not in filled:
                mask[r].fill_(-1)
        self.fill_bitmask(mask, rows, grammars)
        return mask

    def fill_bitmask(self, bitmask: torch.Tensor, rows: list[int],
                     grammars: list[RequestGrammar]) -> None:
        """bitmask[rows[i]] = the tokens grammars[i] allows next (one batched call); none of
        them may be reasoning (`RequestGrammar.reasoning`: their rows stay all-ones)."""
        self._batch.batch_fill_next_token_bitmask([g.matcher for g in grammars], bitmask,
                                                  indices=rows)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class RequestGrammar:
    """One request's position in its grammar (an xgrammar matcher once compiled)."""

    def __init__(self, compiled: concurrent.futures.Future,
                 think_end_id: int | None = None) -> None:
        self._compiled = compiled
        self.matcher: Any = None
        self.error: str | None = None
        # the think-end token this grammar waits for; None once it came (or without reasoning)
        self.think_end_id = think_end_id

    @property
    def reasoning(self) -> bool:
        """The model is still reasoning: the grammar does not constrain the next token."""
        return self.think_end_id is not None

    def ready(self) -> bool:
        """Whether the request may be scheduled: compiled, or failed (see `error`)."""
        if self.matcher is not None or self.error is not None:
            return True
        if not self._compiled.done():
            return False
        exc = self._compiled.exception()
        if exc is not None:
            self.error = f"grammar compilation failed: {exc}"
            return True
        import xgrammar as xgr

        self.matcher = xgr.GrammarMatcher(self._compiled.result())
        return True

    def accept(self, token: int) -> bool:
        """Advance past an output token; False if the grammar does not allow it. While
        reasoning every token is allowed and only the think-end token changes anything."""
        if self.think_end_id is not None:
            if token == self.think_end_id:
                self.think_end_id = None
            return True
        return bool(self.matcher.accept_token(token))

    @property
    def terminated(self) -> bool:
        """The grammar is complete and its stop token was accepted."""
        return self.think_end_id is None and bool(self.matcher.is_terminated())


def create_grammar_backend(name: str, tokenizer: Any, vocab_size: int,
                           stop_ids: Iterable[int]) -> XGrammarBackend | None:
    """The backend `--grammar-backend` names; None for "none"."""
    if name == "none":
        return None
    if name != "xgrammar":
        raise ValueError(f"--grammar-backend must be one of {GRAMMAR_BACKENDS}, got {name!r}")
    if not xgrammar_available():
        raise ValueError("--grammar-backend xgrammar needs the xgrammar package "
                         "(pip install xgrammar), or pass --grammar-backend none")
    return XGrammarBackend(tokenizer, vocab_size, stop_ids)
