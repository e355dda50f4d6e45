"""Request bodies -> validated request + prompt token ids, off the event loop.

Parsing and validating JSON, rendering the chat template and tokenizing cost time in proportion
to the body (seconds for a 30 MiB prompt). Run on the event loop, that time would stall /health and
every running stream, so bodies above INLINE_BODY_BYTES go to a pool of worker processes
(processes, not threads: pydantic's JSON parsing and pure-Python tokenizers hold the GIL). Small
bodies, whose cost is bounded by a millisecond or so, are prepared in place, which spares them the
round trip. Both run the same `prepare` function.

A prompt whose byte length alone proves it cannot fit the context is refused before it is
tokenized: no token covers more than `max_token_bytes` bytes of text.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from pydantic import BaseModel, ValidationError

from tessera.models.tokenizer import ByteTokenizer, HFTokenizer, Tokenizer, load_tokenizer
from tessera.server.errors import APIError, bad_request, from_validation_errors
from tessera.server.protocol import (
    AbortRequest,
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
)

logger = logging.getLogger(__name__)

# Bodies up to this size are prepared on the event loop (well under a millisecond to tokenize).
INLINE_BODY_BYTES = 16 << 10
# A normalizer may fold a 4-byte character into a 1-byte one (NFKC): the byte bound allows for it.
_NORMALIZER_SHRINK = 4
_REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "completions": CompletionRequest, "chat": ChatCompletionRequest,
    "generate": GenerateRequest, "abort": AbortRequest}


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """What a worker process needs to load the server's tokenizer."""
    path: str | None
    vocab_size: int
    eos_token_ids: tuple[int, ...]


@dataclasses.dataclass
class Prepared:
    request: Any                          # the validated pydantic request
    prompts: list[list[int]] | None       # token ids per prompt; None for bodies without one


# Each process keeps its tokenizer (and its longest token) once loaded.
_tokenizers: dict[TokenizerSpec, tuple[Tokenizer, int | None]] = {}


def remember_tokenizer(spec: TokenizerSpec, tokenizer: Tokenizer) -> None:
    """Use an already loaded tokenizer for `spec` in this process."""
    _tokenizers[spec] = (tokenizer, max_token_bytes(tokenizer))


def _tokenizer(spec: TokenizerSpec) -> tuple[Tokenizer, int | None]:
    if spec not in _tokenizers:
        remember_tokenizer(spec, load_tokenizer(spec.path, spec.vocab_size, spec.eos_token_ids))
    return _tokenizers[spec]


def max_token_bytes(tokenizer: Tokenizer) -> int | None:
    """An upper bound on the UTF-8 bytes of input text one token stands for (None: unknown)."""
    if isinstance(tokenizer, ByteTokenizer):
        return max(1, *(len(s.encode()) for s in tokenizer.SPECIALS))
    if isinstance(tokenizer, HFTokenizer):
        # vocab strings are at least as long as the bytes they match (byte-level BPE spells each
        # byte as one character; SentencePiece spells a space as the 3-byte "▁")
        longest = max(len(t.encode()) for t in tokenizer.tok.get_vocab())
        return longest * _NORMALIZER_SHRINK
    return None


def prepare(kind: str, body: bytes, spec: TokenizerSpec, context_length: int) -> Prepared:
    """Validate `body` as the request of route `kind` and tokenize its prompts; raise APIError
    (a 400 naming the field) for anything wrong with it."""
    if not body:
        raise bad_request("the request body is empty; send a JSON object")
    model = _REQUEST_MODELS[kind]
    try:
        req = model.model_validate_json(body)
    except ValidationError as e:
        raise from_validation_errors(e.errors(include_url=False), model) from None
    if kind == "abort":
        return Prepared(req, None)
    tokenizer, per_token = _tokenizer(spec)

    def encode(text: str, param: str) -> list[int]:
        if per_token is not None:
            nbytes = len(text.encode("utf-8"))
            at_least = -(-nbytes // per_token)
            if at_least >= context_length:
                raise bad_request(f"{param}: the prompt is {nbytes} bytes, so at least {at_least} "
                                  f"tokens, but the context length is {context_length}; shorten "
                                  "the prompt", param)
        return tokenizer.encode(text)

    if kind == "completions":
        prompt = req.prompt
        if isinstance(prompt, str):
            return Prepared(req, [encode(prompt, "prompt")])
        if isinstance(prompt[0], str):
            return Prepared(req, [encode(p, "prompt") for p in prompt])
        if isinstance(prompt[0], int):
            return Prepared(req, [list(prompt)])
        return Prepared(req, [list(p) for p in prompt])
    if kind == "chat":
        messages = [{"role": m.role, "content": m.text(), **({"name": m.name} if m.name else {})}
                    for m in req.messages]
        try:
            text = tokenizer.apply_chat_template(messages)
        except Exception as e:  # noqa: BLE001 - templates raise for invalid conversations
            raise bad_request(f"messages: the chat template rejected them: {e}",
                              "messages") from None
        return Prepared(req, [encode(text, "messages")])
    # generate
    if req.input_ids is not None:
        return Prepared(req, [list(req.input_ids)])
    return Prepared(req, [encode(req.text or "", "text")])


def _worker_init(parent_pid: int) -> None:
    # Ctrl-C reaches the whole process group; the server decides when workers stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch_parent() -> None:
        # a server killed with SIGKILL cannot stop its pool: exit once it is gone
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch_parent, daemon=True, name="watch-parent").start()


def _warm() -> None:
    """Nothing: submitted once per worker so the pool's processes start with the server."""


class PreparePool:
    """`await pool.run(kind, body, spec, context_length)`: `prepare` in place for small bodies,
    in one of `workers` processes for large ones."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._executor = self._start()

    def _start(self) -> concurrent.futures.ProcessPoolExecutor:
        executor = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
            initargs=(os.getpid(),))
        for _ in range(self.workers):
            executor.submit(_warm)
        return executor

    async def run(self, kind: str, body: bytes, spec: TokenizerSpec, context_length: int
                  ) -> Prepared:
        if len(body) <= INLINE_BODY_BYTES:
            return prepare(kind, body, spec, context_length)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, prepare, kind, body, spec,
                                              context_length)
        except BrokenProcessPool:
            # a worker was killed (out of memory?): start a fresh pool for the next requests
            logger.error("a tokenizer worker process died; restarting the pool")
            old, self._executor = self._executor, self._start()
            old.shutdown(wait=False, cancel_futures=True)
            raise APIError(503, "the tokenizer worker handling this request died; retry", None,
                           "tokenizer_failed", "server_error") from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
