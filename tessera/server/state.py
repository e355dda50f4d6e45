"""What every handler needs (engine client, tokenizer, limits) and how it waits for outputs."""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request

from tessera.engine.engine import StepOutput
from tessera.models.tokenizer import Tokenizer
from tessera.sampling.params import SamplingParams
from tessera.server.engine_client import EngineClient, EngineDeadError, RequestStream
from tessera.server.errors import APIError, from_value_error, read_body
from tessera.server.io_struct import GenerateItem
from tessera.server.prepare import Prepared, PreparePool, TokenizerSpec
from tessera.server.protocol import REFUSED

logger = logging.getLogger(__name__)


class ClientGone(Exception):
    """The HTTP client disconnected; the request's samples were aborted."""


_CLIENT_GONE = object()  # queue sentinel put there by the disconnect watcher


@dataclasses.dataclass
class ServerState:
    client: EngineClient
    tokenizer: Tokenizer
    info: dict[str, Any]
    pool: PreparePool
    tokenizer_spec: TokenizerSpec
    api_key: str | None = None
    engine_stall_timeout: float = 1.5
    chat_template: Any = None  # server.chat_template.ChatTemplate
    tool_call_parser: str | None = None
    reasoning_parser: str | None = None
    _counter: itertools.count = dataclasses.field(default_factory=itertools.count)

    @property
    def model_name(self) -> str:
        return self.info["served_model_name"]

    @property
    def max_total_tokens(self) -> int:
        """Prompt + output can never exceed this (context length, and the KV pool)."""
        return min(self.info["context_length"], self.info["kv_cache_tokens"])

    def new_id(self, prefix: str) -> str:
        # unique across restarts (uuid) and cheap to read in logs (counter)
        return f"{prefix}-{uuid.uuid4().hex[:16]}{next(self._counter)}"

    async def prepare(self, kind: str, request: Request) -> Prepared:
        """Read the body and turn it into the validated request of route `kind` plus its prompts'
        token ids (in a worker process when the body is large); APIError 400/413 if it is bad."""
        body = await read_body(request)
        prep = await self.pool.run(kind, body, self.tokenizer_spec, self.info["context_length"])
        _log_unknown(prep.request, request.url.path)
        return prep

    def engine_problem(self) -> str | None:
        """Why the engine cannot serve right now (dead, or silent past the stall bound)."""
        client = self.client
        if client.dead is not None:
            return f"engine is not running: {client.dead}"
        if not client.proc.is_alive():
            return f"engine process exited with code {client.proc.exitcode}"
        silent = client.silent_for()
        if silent > self.engine_stall_timeout:
            return (f"engine has not been heard from for {silent:.1f} s (stuck in a step, or "
                    f"stopped; --engine-stall-timeout {self.engine_stall_timeout:g})")
        return None

    def check_model(self, model: str | None) -> None:
        """A 400 for a model this server does not serve; absent or "" (as vLLM takes it, for
        clients that must send the field) means the served one."""
        if model and model not in (self.model_name, self.info["model_path"]):
            raise APIError(400, f"model '{model}' does not exist; this server serves "
                           f"'{self.model_name}' (see /v1/models)", "model", "model_not_found")

    def token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    async def submit(self, group_id: str, prompts: list[list[int]],
                     params: SamplingParams | list[SamplingParams], prompt_param: str = "prompt",
                     openai_names: bool = True) -> RequestStream:
        """Send n samples of each prompt (params: one for all prompts, or one per prompt, with
        the same n); sample k of prompt i is choice i * n + k."""
        per_prompt = params if isinstance(params, list) else [params] * len(prompts)
        n = per_prompt[0].n
        items = []
        for i, ids in enumerate(prompts):
            p = per_prompt[i]
            for k in range(n):
                seed = None if p.seed is None else p.seed + k
                sample = dataclasses.replace(p, n=1, seed=seed)
                items.append(GenerateItem(f"{group_id}-{i * n + k}", ids, sample))
        try:
            return await self.client.generate(group_id, items)
        except ValueError as e:
            raise from_value_error(e, prompt_param, openai_names) from None
        except EngineDeadError as e:
            raise APIError(503, f"the engine is not running: {e}", None, "engine_dead",
                           "server_error") from None


_LOGGED_UNKNOWN: set[tuple[str, str]] = set()


def _log_unknown(obj: Any, path: str) -> None:
    """Unknown fields are ignored, as OpenAI ignores them; each is logged once per endpoint so
    a client relying on one can find out why it has no effect (refused ones got a 400)."""
    for name in obj.model_extra or ():
        if name in REFUSED or (path, name) in _LOGGED_UNKNOWN:
            continue
        _LOGGED_UNKNOWN.add((path, name))
        logger.info("ignoring unknown field '%s' on %s (logged once)", name, path)


def choice_index(rid: str) -> int:
    """Engine rids are '<request id>-<choice index>'."""
    return int(rid.rsplit("-", 1)[1])


async def _watch_disconnect(request: Request, queue: asyncio.Queue) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            queue.put_nowait(_CLIENT_GONE)
            return


async def outputs(state: ServerState, request: Request, stream: RequestStream
                  ) -> AsyncIterator[StepOutput]:
    """Yield the request's deltas until every sample finished.

    Raises ClientGone when the client disconnects (works for plain and streaming responses, on any
    ASGI spec version), EngineDeadError when the engine process died. Always releases the request,
    which aborts unfinished samples so their KV is freed.
    """
    watcher = asyncio.create_task(_watch_disconnect(request, stream.queue))
    remaining = set(stream.rids)
    try:
        while remaining:
            item = await stream.queue.get()
            if item is _CLIENT_GONE:
                raise ClientGone()
            if isinstance(item, EngineDeadError):
                raise item
            if item.finished:
                remaining.discard(item.rid)
            yield item
    finally:
        watcher.cancel()
        state.client.release(stream)
