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
from tessera.server.chat import tool_mode
from tessera.server.chat_template import ChatTemplate
from tessera.server.errors import APIError, bad_request, from_validation_errors
from tessera.server.protocol import (
    AbortRequest,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    GenerateRequest,
    TokenizeRequest,
    check_refused,
)

logger = logging.getLogger(__name__)

# Bodies up to this size are prepared on the event loop (well under a millisecond to tokenize).
INLINE_BODY_BYTES = 16 << 10
# A normalizer may fold a 4-byte character into a 1-byte one (NFKC): the byte bound allows for it.
_NORMALIZER_SHRINK = 4
_REQUEST_MODELS: dict[str, type[BaseModel]] = {
    "completions": CompletionRequest, "chat": ChatCompletionRequest,
    "generate": GenerateRequest, "abort": AbortRequest, "tokenize": TokenizeRequest,
    "detokenize": DetokenizeRequest}


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    """What a worker process needs to load the server's tokenizer."""
    path: str | None
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    chat_template: str | None = None     # --chat-template (None: the tokenizer's own)
    tool_call_parser: str | None = None  # --tool-call-parser


@dataclasses.dataclass
class Prepared:
    request: Any                          # the validated pydantic request
    prompts: list[list[int]] | None       # token ids per prompt; None for bodies without one
    texts: list[str] | None = None        # completions echo: each prompt's text; detokenize
    tool_mode: Any = None                 # chat: its server.chat.ToolMode


# Each process keeps its tokenizer (and its longest token) and chat template once loaded.
_tokenizers: dict[TokenizerSpec, tuple[Tokenizer, int | None]] = {}
_templates: dict[TokenizerSpec, ChatTemplate] = {}


def remember_tokenizer(spec: TokenizerSpec, tokenizer: Tokenizer,
                       template: ChatTemplate | None = None) -> None:
    """Use an already loaded tokenizer (and chat template) for `spec` in this process."""
    _tokenizers[spec] = (tokenizer, max_token_bytes(tokenizer))
    if template is not None:
        _templates[spec] = template


def _tokenizer(spec: TokenizerSpec) -> tuple[Tokenizer, int | None]:
    if spec not in _tokenizers:
        remember_tokenizer(spec, load_tokenizer(spec.path, spec.vocab_size, spec.eos_token_ids))
    return _tokenizers[spec]


def _template(spec: TokenizerSpec) -> ChatTemplate:
    if spec not in _templates:
        # the server checked the --chat-template source at start-up
        _templates[spec] = ChatTemplate(_tokenizer(spec)[0], spec.chat_template)
    return _templates[spec]


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
    """Validate `body` as the request of route `kind`, render its chat template and tokenize its
    prompts; raise APIError (a 400 naming the field) for anything wrong with it."""
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
    if kind == "detokenize":
        if any(not 0 <= t < spec.vocab_size for t in req.tokens):
            return Prepared(req, None)  # the handler names them
        return Prepared(req, None, [tokenizer.decode(req.tokens)])

    def encode(text: str, param: str, add_special_tokens: bool = True) -> list[int]:
        if per_token is not None:
            nbytes = len(text.encode("utf-8"))
            at_least = -(-nbytes // per_token)
            if at_least >= context_length:
                raise bad_request(f"{param}: the prompt is {nbytes} bytes, so at least {at_least} "
                                  f"tokens, but the context length is {context_length}; shorten "
                                  "the prompt", param)
        return tokenizer.encode(text, add_special_tokens=add_special_tokens)

    if kind == "completions":
        check_refused(req)
        return _completion(req, encode, tokenizer)
    if kind == "chat":
        check_refused(req)
        mode = tool_mode(req, spec.tool_call_parser)
        # encoded without the tokenizer's specials, as HF's apply_chat_template(tokenize=True)
        # does: a template that writes the BOS gets one BOS (see chat_template.py)
        text = _template(spec).render_text(
            [m.for_template() for m in req.messages], mode.tools,
            add_generation_prompt=req.add_generation_prompt,
            continue_final_message=req.continue_final_message, kwargs=req.chat_template_kwargs)
        return Prepared(req, [encode(text, "messages", add_special_tokens=False)],
                        tool_mode=mode)
    if kind == "tokenize":  # reports the count, so no context bound
        if req.messages is not None:
            # as vLLM: the rendered text is encoded without the tokenizer's specials unless
            # add_special_tokens is set explicitly
            text = _template(spec).render_text(
                [m.for_template() for m in req.messages],
                [t.model_dump(exclude_none=True, by_alias=True) for t in req.tools or ()] or None,
                add_generation_prompt=req.add_generation_prompt,
                continue_final_message=req.continue_final_message,
                kwargs=req.chat_template_kwargs)
            ids = tokenizer.encode(text, add_special_tokens="add_special_tokens" in
                                   req.model_fields_set and req.add_special_tokens)
        else:
            ids = tokenizer.encode(req.prompt or "", add_special_tokens=req.add_special_tokens)
        return Prepared(req, [ids])
    # generate: one prompt or a batch
    if req.input_ids is not None:
        return Prepared(req, [list(p) for p in req.input_ids] if req.is_batch
                        else [list(req.input_ids)])
    texts = req.text if isinstance(req.text, list) else [req.text or ""]
    return Prepared(req, [encode(t, "text") for t in texts])


def _completion(req: CompletionRequest, encode: Any, tokenizer: Tokenizer) -> Prepared:
    """Prompt ids of a completion and, for echo, each prompt's text (as sent, or decoded)."""
    prompt = req.prompt
    if isinstance(prompt, str):
        return Prepared(req, [encode(prompt, "prompt")], [prompt] if req.echo else None)
    if isinstance(prompt[0], str):
        return Prepared(req, [encode(p, "prompt") for p in prompt],
                        list(prompt) if req.echo else None)
    ids = [list(prompt)] if isinstance(prompt[0], int) else [list(p) for p in prompt]
    texts = ([tokenizer.decode(p, skip_special_tokens=False) for p in ids] if req.echo
             else None)
    return Prepared(req, ids, texts)


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
