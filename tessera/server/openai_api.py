"""/v1/completions and /v1/chat/completions (OpenAI wire format, streaming or not)."""
from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tessera.engine.engine import StepOutput
from tessera.sampling.params import THINK_END, SamplingParams
from tessera.server.chat import ChatOutput, output_constraint
from tessera.server.engine_client import EngineDeadError, RequestStream
from tessera.server.errors import bad_request, error_body, from_value_error
from tessera.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields
from tessera.server.reasoning import REASONING_PARSERS, create_reasoning_parser, thinks
from tessera.server.responses import (
    Choice,
    ResponseMeta,
    chat_logprobs,
    completion_logprobs,
    echo_logprobs,
    merge_logprobs,
    sse_event,
    usage,
    vllm_prompt_logprobs,
)
from tessera.server.state import ClientGone, ServerState, choice_index, outputs
from tessera.server.tool_parsers import StreamingToolParser, create_tool_parser

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


def build_params(req: SamplingFields, max_tokens: int, logprobs: bool, top_logprobs: int,
                 constraint: tuple[str, str] | None = None,
                 defaults: dict[str, Any] | None = None, **extra: Any) -> SamplingParams:
    """SamplingParams of a request; `defaults` (the checkpoint's generation_config.json) fill
    the sampling fields the request does not set."""
    kwargs: dict[str, Any] = {
        **(defaults or {}),
        "max_new_tokens": max_tokens, "min_new_tokens": req.min_tokens, "n": req.n,
        "seed": req.seed, "stop": req.stop, "stop_token_ids": req.stop_token_ids,
        "ignore_eos": req.ignore_eos, "skip_special_tokens": req.skip_special_tokens,
        "logprobs": logprobs, "top_logprobs": top_logprobs, "logit_bias": req.logit_bias,
        **extra}
    if constraint is not None:
        kwargs[constraint[0]] = constraint[1]
    for name in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                 "frequency_penalty", "presence_penalty"):
        value = getattr(req, name)
        if value is not None:  # absent: the engine's default (OpenAI's, for OpenAI fields)
            kwargs[name] = value
    try:
        return SamplingParams(**kwargs)
    except ValueError as e:
        raise from_value_error(e) from None


def check_constraint(state: ServerState, constraint: tuple[str, str] | None,
                     param: str) -> None:
    """A 400 naming `param` for a constraint the grammar backend cannot use (before the engine
    compiles it)."""
    if constraint is None:
        return
    if state.info.get("grammar_backend", "none") == "none":
        raise bad_request(f"{param}: structured output is off on this server (started with "
                          "--grammar-backend none)", param)
    from tessera.scheduler.grammar import check_grammar

    try:
        check_grammar(*constraint)
    except ValueError as e:
        raise bad_request(f"{param}: {e}", param) from None


def _extras_constraint(req: CompletionRequest) -> tuple[str, tuple[str, str]] | None:
    given = req.extra_constraints()
    if len(given) > 1:
        raise bad_request(f"{given[0][0]} and {given[1][0]}: only one output constraint per "
                          "request", given[1][0])
    return given[0] if given else None


# ---- endpoints ------------------------------------------------------------------------------------
@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    state = get_state(request)
    # parsed, checked for refused fields and tokenized off the event loop when large
    prep = await state.prepare("completions", request)
    req: CompletionRequest = prep.request
    state.check_model(req.model)
    prompts = prep.prompts
    assert prompts is not None
    named = _extras_constraint(req)
    constraint = named[1] if named else None
    check_constraint(state, constraint, named[0] if named else "json_schema")
    want_lp = req.logprobs is not None
    params = build_params(req, req.max_tokens if req.max_tokens is not None else 16,
                          logprobs=want_lp, top_logprobs=req.logprobs or 0,
                          constraint=constraint, defaults=state.info.get("generation_defaults"),
                          prompt_logprobs=_prompt_top_n(req))
    # echo: each prompt as sent, or its ids decoded (prepare did that)
    texts = prep.texts or []
    return await _serve(state, request, req, prompts, params, chat=False, echo_texts=texts)


def _prompt_top_n(req: CompletionRequest) -> int | None:
    """How many alternatives each prompt token's logprob needs: echo with logprobs and vLLM's
    prompt_logprobs both read them (None: prompt logprobs are not computed)."""
    wanted = [n for n in (req.logprobs if req.echo else None, req.prompt_logprobs) if n is not None]
    return max(wanted) if wanted else None


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    state = get_state(request)
    # parsed, templated (with the tools) and tokenized off the event loop when large
    prep = await state.prepare("chat", request)
    req: ChatCompletionRequest = prep.request
    state.check_model(req.model)
    assert prep.prompts is not None
    ids = prep.prompts[0]
    mode = prep.tool_mode
    named = output_constraint(req, mode)
    param, constraint = named if named is not None else ("", None)
    check_constraint(state, constraint, param)
    # a thinking model's constraint applies to its answer: from after </think> on
    continued = req.messages[-1].text() if req.continue_final_message else ""
    reasoning = constraint is not None and thinks(state.reasoning_parser,
                                                  req.chat_template_kwargs, continued)
    if reasoning and state.info.get("think_end_token_id") is None:
        switch = REASONING_PARSERS[state.reasoning_parser].switch
        off = f'; or turn thinking off: chat_template_kwargs {{"{switch}": false}}' if switch \
            else ""
        raise bad_request(f"{param}: with --reasoning-parser {state.reasoning_parser} the "
                          f"constraint starts after the reasoning's {THINK_END}, but this "
                          f"model's tokenizer has no single {THINK_END} token; start the server "
                          f"without --reasoning-parser{off}", param)
    max_tokens = req.max_completion_tokens or req.max_tokens
    if max_tokens is None:
        # OpenAI's default is "until the context is full"; the KV pool bounds it too
        max_tokens = max(1, state.max_total_tokens - len(ids))
    params = build_params(req, max_tokens, logprobs=req.logprobs,
                          top_logprobs=req.top_logprobs or 0, constraint=constraint,
                          defaults=state.info.get("generation_defaults"),
                          require_reasoning=reasoning, prompt_logprobs=req.prompt_logprobs)

    def chat_output() -> ChatOutput:
        parser = (StreamingToolParser(create_tool_parser(state.tool_call_parser))
                  if mode.kind == "auto" and state.tool_call_parser else None)
        return ChatOutput(mode, create_reasoning_parser(state.reasoning_parser,
                                                        req.separate_reasoning), parser)

    return await _serve(state, request, req, [ids], params, chat=True, chat_output=chat_output)


async def _serve(state: ServerState, request: Request, req: CompletionRequest |
                 ChatCompletionRequest, prompts: list[list[int]], params: SamplingParams,
                 chat: bool, chat_output: Callable[[], ChatOutput] | None = None,
                 echo_texts: list[str] | None = None) -> Response:
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
    options = req.stream_options
    meta = ResponseMeta(group, "chat.completion" if chat else "text_completion", int(time.time()),
                        state.model_name, [len(p) for p in prompts], params.n, chat, prompts,
                        echo_texts=echo_texts or [],
                        stop_token_ids=frozenset(params.stop_token_ids),
                        # vLLM's rule: usage on every chunk only along with the final one
                        continuous_usage=options is not None and options.include_usage
                        and options.continuous_usage_stats,
                        token_name=_token_id_name if req.return_tokens_as_token_ids
                        else state.token_str,
                        echo_logprobs=not chat and req.echo and req.logprobs is not None,
                        vllm_prompt_logprobs=req.prompt_logprobs is not None)
    choices = [Choice(i) for i in range(len(prompts) * params.n)]
    for c in choices:
        c.chat = chat_output() if chat_output is not None else None
    if req.stream:
        include_usage = options is not None and options.include_usage
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
    if chat:  # vLLM's prompt_logprobs sits on a chat response (one prompt); null unless asked
        body["prompt_logprobs"] = (vllm_prompt_logprobs(meta.token_name, choices[0],
                                                        meta.prompts[0])
                                   if meta.vllm_prompt_logprobs else None)
    return JSONResponse(body)


def _token_id_name(token_id: int) -> str:
    return f"token_id:{token_id}"


def _finish_reason(c: Choice) -> str | None:
    if c.chat is not None and c.chat.has_calls and c.finish_reason == "stop":
        return "tool_calls"
    return c.finish_reason


def _final_choice(state: ServerState, meta: ResponseMeta, c: Choice) -> dict[str, Any]:
    want_lp = bool(c.logprobs) or meta.echo_logprobs
    if meta.chat:
        c.chat.feed(c.text)
        c.chat.finish()
        return {"index": c.index, "message": c.chat.message(),
                "logprobs": chat_logprobs(meta.token_name, c.token_ids, c.logprobs,
                                          c.top_logprobs) if want_lp else None,
                "finish_reason": _finish_reason(c), **c.stop_fields(meta)}
    text, lp = c.text, None
    if meta.echo_texts:
        prompt = meta.prompts[c.index // meta.n]
        text = meta.echo_texts[c.index // meta.n] + text
        if want_lp:
            lp = echo_logprobs(meta.token_name, c, prompt)
    if want_lp:
        lp = merge_logprobs(lp, completion_logprobs(meta.token_name, c, c.token_ids,
                                                    c.logprobs, c.top_logprobs))
    # vLLM's prompt_logprobs: null unless asked for (vLLM always sends the field)
    plp = (vllm_prompt_logprobs(meta.token_name, c, meta.prompts[c.index // meta.n])
           if meta.vllm_prompt_logprobs else None)
    return {"index": c.index, "text": text, "logprobs": lp, "finish_reason": c.finish_reason,
            **c.stop_fields(meta), "prompt_logprobs": plp}


async def _sse(state: ServerState, request: Request, stream: RequestStream, meta: ResponseMeta,
               choices: list[Choice], include_usage: bool) -> AsyncIterator[str]:
    obj = "chat.completion.chunk" if meta.chat else "text_completion"
    head = {"id": meta.id, "object": obj, "created": meta.created, "model": meta.model}
    try:
        if meta.chat:  # OpenAI opens every chat choice with a role-only delta, one per chunk
            for c in choices:   # (clients that read choices[0] of each chunk see every index)
                opening = {**head, "choices": [
                    {"index": c.index, "delta": {"role": "assistant", "content": ""},
                     "logprobs": None, "finish_reason": None}]}
                if meta.continuous_usage:  # every chunk has it, the opening ones too
                    opening["usage"] = usage(meta, choices)
                yield sse_event(opening)
        started: set[int] = set()
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for out in outs:
                c = choices[choice_index(out.rid)]
                c.add(out)
                first = c.index not in started
                started.add(c.index)
                chunk = _chunk_choice(state, meta, c, out, first)
                if chunk is None:
                    continue  # the detokenizer or a parser is holding text back
                event = {**head, "choices": [chunk]}
                if meta.continuous_usage:
                    event["usage"] = usage(meta, choices)
                yield sse_event(event)
        if include_usage:
            yield sse_event({**head, "choices": [], "usage": usage(meta, choices)})
        yield "data: [DONE]\n\n"
    except ClientGone:
        return
    except EngineDeadError as e:
        yield sse_event(error_body(f"the engine stopped: {e}", None, "engine_dead",
                                   "server_error"))
        yield "data: [DONE]\n\n"


def _chunk_choice(state: ServerState, meta: ResponseMeta, c: Choice, out: StepOutput,
                  first: bool) -> dict[str, Any] | None:
    has_lp = bool(out.new_logprobs)
    stop = c.stop_fields(meta) if out.finished else {}
    if meta.chat:
        delta = c.chat.feed(out.new_text)
        if out.finished:
            for key, value in c.chat.finish().items():
                delta[key] = delta.get(key, type(value)()) + value
        if not (delta or out.finished or has_lp):
            return None
        lp = (chat_logprobs(meta.token_name, out.new_token_ids, out.new_logprobs,
                            out.new_top_logprobs) if has_lp else None)
        return {"index": c.index, "delta": delta, "logprobs": lp,
                "finish_reason": _finish_reason(c) if out.finished else None, **stop}
    text, lp = out.new_text, None
    if first and meta.echo_texts:
        prompt = meta.prompts[c.index // meta.n]
        text = meta.echo_texts[c.index // meta.n] + text
        if c.prompt_logprobs is not None:
            lp = echo_logprobs(meta.token_name, c, prompt)
    if not (text or out.finished or has_lp or lp):
        return None
    if has_lp:
        lp = merge_logprobs(lp, completion_logprobs(meta.token_name, c, out.new_token_ids,
                                                    out.new_logprobs, out.new_top_logprobs))
    return {"index": c.index, "text": text, "logprobs": lp, "finish_reason": out.finish_reason,
            **stop}
