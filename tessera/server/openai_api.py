"""/v1/completions and /v1/chat/completions (OpenAI wire format, streaming or not)."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tessera.engine.engine import StepOutput
from tessera.sampling.params import SamplingParams
from tessera.server.engine_client import EngineDeadError, RequestStream
from tessera.server.errors import bad_request, error_body, from_value_error
from tessera.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from tessera.server.state import ClientGone, ServerState, choice_index, outputs

router = APIRouter()

# A bound on samples per request (prompts x n) so one request cannot queue unbounded work.
MAX_SAMPLES_PER_REQUEST = 1024
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ReleasingStreamingResponse(StreamingResponse):
    """SSE response that releases its request however it ends, even if the client is gone before
    the body generator first runs (then the generator's own cleanup never executes)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=SSE_HEADERS)
        self._release = release

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


def get_state(request: Request) -> ServerState:
    return request.app.state.server


@dataclasses.dataclass
class ResponseMeta:
    id: str
    object: str
    created: int
    model: str
    prompt_lens: list[int]
    n: int
    chat: bool


@dataclasses.dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    finish_reason: str | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    text_offset: int = 0  # completions logprobs: offset of the next token in the text

    def add(self, out: StepOutput) -> None:
        self.text += out.new_text
        self.token_ids += out.new_token_ids
        self.logprobs += out.new_logprobs
        self.top_logprobs += out.new_top_logprobs
        self.num_output_tokens = out.num_output_tokens
        self.num_cached_tokens = out.num_cached_tokens
        if out.finished:
            self.finish_reason = out.finish_reason


def build_params(req: SamplingFields, max_tokens: int, logprobs: bool, top_logprobs: int
                 ) -> SamplingParams:
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_tokens, "min_new_tokens": req.min_tokens, "n": req.n,
        "seed": req.seed, "stop": req.stop, "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos, "skip_special_tokens": req.skip_special_tokens,
        "logprobs": logprobs, "top_logprobs": top_logprobs}
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                 "frequency_penalty", "presence_penalty"):
        value = getattr(req, name)
        if value is not None:  # absent: the engine's default (OpenAI's, for OpenAI fields)
            kwargs[name] = value
    try:
        return SamplingParams(**kwargs)
    except ValueError as e:
        raise from_value_error(e) from None


def usage(meta: ResponseMeta, choices: list[Choice]) -> dict[str, Any]:
    prompt = sum(meta.prompt_lens)
    completion = sum(c.num_output_tokens for c in choices)
    # cached tokens count once per prompt, like its prompt tokens
    cached = sum(max(c.num_cached_tokens for c in choices[i * meta.n:(i + 1) * meta.n])
                 for i in range(len(meta.prompt_lens)))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


# ---- logprobs in OpenAI's two shapes ------------------------------------------------------------
def completion_logprobs(state: ServerState, choice: Choice, ids: list[int], lps: list[float],
                        tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
    tokens = [state.token_str(t) for t in ids]
    offsets = []
    for tok in tokens:
        offsets.append(choice.text_offset)
        choice.text_offset += len(tok)
    return {"tokens": tokens, "token_logprobs": lps,
            "top_logprobs": [{state.token_str(t): lp for t, lp in top} for top in tops]
            if tops else None,
            "text_offset": offsets}


def chat_logprobs(state: ServerState, ids: list[int], lps: list[float],
                  tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
    def entry(tid: int, lp: float) -> dict[str, Any]:
        tok = state.token_str(tid)
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}

    content = []
    for j, (tid, lp) in enumerate(zip(ids, lps)):
        top = tops[j] if j < len(tops) else []
        content.append({**entry(tid, lp), "top_logprobs": [entry(t, v) for t, v in top]})
    return {"content": content}


# ---- endpoints ------------------------------------------------------------------------------------
@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = get_state(request)
    prep = await state.prepare("completions", request)
    req: CompletionRequest = prep.request
    state.check_model(req.model)
    prompts = prep.prompts
    assert prompts is not None
    params = build_params(req, req.max_tokens if req.max_tokens is not None else 16,
                          logprobs=req.logprobs is not None, top_logprobs=req.logprobs or 0)
    return await _serve(state, request, req, prompts, params, chat=False)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = get_state(request)
    prep = await state.prepare("chat", request)
    req: ChatCompletionRequest = prep.request
    state.check_model(req.model)
    assert prep.prompts is not None
    ids = prep.prompts[0]
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is None:
        # OpenAI's default is "until the context is full"; the KV pool bounds it too
        max_tokens = max(1, state.max_total_tokens - len(ids))
    params = build_params(req, max_tokens, logprobs=req.logprobs,
                          top_logprobs=req.top_logprobs or 0)
    return await _serve(state, request, req, [ids], params, chat=True)


async def _serve(state: ServerState, request: Request, req: CompletionRequest |
                 ChatCompletionRequest, prompts: list[list[int]], params: SamplingParams,
                 chat: bool) -> Response:
    if len(prompts) * params.n > MAX_SAMPLES_PER_REQUEST:
        raise bad_request(f"prompts x n = {len(prompts) * params.n} samples; at most "
                          f"{MAX_SAMPLES_PER_REQUEST} per request", "n")
    for ids in prompts:
        # like OpenAI: an explicit max_tokens that cannot fit is an error, not silently clamped
        # (an over-long prompt alone is reported by the engine, naming the prompt)
        if len(ids) < state.info["context_length"] and \
                len(ids) + params.max_new_tokens > state.max_total_tokens:
            name = "max_completion_tokens" if chat and req.max_completion_tokens else "max_tokens"
            raise bad_request(
                f"{name}={params.max_new_tokens} plus the prompt's {len(ids)} tokens exceeds the "
                f"{state.max_total_tokens} tokens a request can hold (context length "
                f"{state.info['context_length']}, KV pool {state.info['kv_cache_tokens']}); "
                f"lower {name}", name)
    group = req.rid or state.new_id("chatcmpl" if chat else "cmpl")
    stream = await state.submit(group, prompts, params, "messages" if chat else "prompt")
    meta = ResponseMeta(group, "chat.completion" if chat else "text_completion", int(time.time()),
                        state.model_name, [len(p) for p in prompts], params.n, chat)
    choices = [Choice(i) for i in range(len(prompts) * params.n)]
    if req.stream:
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        return ReleasingStreamingResponse(
            _sse(state, request, stream, meta, choices, include_usage),
            release=lambda: state.client.release(stream))
    try:
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for out in outs:
                choices[choice_index(out.rid)].add(out)
    except ClientGone:
        return Response(status_code=499)  # nobody is listening; the samples were aborted
    except EngineDeadError as e:
        return JSONResponse(error_body(f"the engine stopped: {e}", None, "engine_dead",
                                       "server_error"), status_code=503)
    body = {"id": meta.id, "object": meta.object, "created": meta.created, "model": meta.model,
            "choices": [_final_choice(state, meta, c) for c in choices],
            "usage": usage(meta, choices)}
    return JSONResponse(body)


def _final_choice(state: ServerState, meta: ResponseMeta, c: Choice) -> dict[str, Any]:
    want_lp = bool(c.logprobs)
    if meta.chat:
        return {"index": c.index, "message": {"role": "assistant", "content": c.text},
                "logprobs": chat_logprobs(state, c.token_ids, c.logprobs, c.top_logprobs)
                if want_lp else None, "finish_reason": c.finish_reason}
    lp = (completion_logprobs(state, c, c.token_ids, c.logprobs, c.top_logprobs)
          if want_lp else None)
    return {"index": c.index, "text": c.text, "logprobs": lp, "finish_reason": c.finish_reason}


def _sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _sse(state: ServerState, request: Request, stream: RequestStream, meta: ResponseMeta,
               choices: list[Choice], include_usage: bool) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if meta.chat else "text_completion"
    head = {"id": meta.id, "object": obj, "created": meta.created, "model": meta.model}
    try:
        if meta.chat:  # OpenAI opens every chat choice with a role-only delta
            yield _sse_event({**head, "choices": [
                {"index": c.index, "delta": {"role": "assistant", "content": ""},
                 "logprobs": None, "finish_reason": None} for c in choices]})
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for out in outs:
                c = choices[choice_index(out.rid)]
                c.add(out)
                if not (out.new_text or out.finished or out.new_logprobs):
                    continue  # the detokenizer is holding back a partial character or stop
                yield _sse_event({**head, "choices": [_chunk_choice(state, meta, c, out)]})
        if include_usage:
            yield _sse_event({**head, "choices": [], "usage": usage(meta, choices)})
        yield "data: [DONE]\n\n"
    except ClientGone:
        return
    except EngineDeadError as e:
        yield _sse_event(error_body(f"the engine stopped: {e}", None, "engine_dead",
                                    "server_error"))
        yield "data: [DONE]\n\n"


def _chunk_choice(state: ServerState, meta: ResponseMeta, c: Choice, out: StepOutput
                  ) -> dict[str, Any]:
    has_lp = bool(out.new_logprobs)
    if meta.chat:
        lp = (chat_logprobs(state, out.new_token_ids, out.new_logprobs, out.new_top_logprobs)
              if has_lp else None)
        delta = {"content": out.new_text} if out.new_text or not out.finished else {}
        return {"index": c.index, "delta": delta, "logprobs": lp,
                "finish_reason": out.finish_reason}
    lp = (completion_logprobs(state, c, out.new_token_ids, out.new_logprobs,
                              out.new_top_logprobs) if has_lp else None)
    return {"index": c.index, "text": out.new_text, "logprobs": lp,
            "finish_reason": out.finish_reason}
