"""The FastAPI app: OpenAI routes (openai_api.py) plus native, health and admin endpoints."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

import tessera
from tessera.sampling.params import SamplingParams
from tessera.server.engine_client import EngineDeadError
from tessera.server.errors import (
    APIError,
    bad_request,
    error_body,
    error_response,
    from_value_error,
    install_error_handlers,
    parse_body,
)
from tessera.server.openai_api import (
    ReleasingStreamingResponse,
    check_constraint,
    get_state,
    router,
)
from tessera.server.protocol import AbortRequest, GenerateRequest
from tessera.server.state import ClientGone, ServerState, outputs

# /health_generate gives up after this long (a healthy but saturated server may queue it).
HEALTH_GENERATE_TIMEOUT_S = 30.0


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="tessera", version=tessera.__version__)
    app.state.server = state
    install_error_handlers(app)
    app.include_router(router)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/health_generate", health_generate, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/generate", generate, methods=["POST"])
    app.add_api_route("/abort_request", abort_request, methods=["POST"])
    app.add_api_route("/flush_cache", flush_cache, methods=["POST"])
    app.add_api_route("/get_server_info", server_info, methods=["GET"])

    @app.middleware("http")
    async def check_api_key(request: Request, call_next: Any) -> Response:
        # every route needs the key (the native /generate, aborts and cache flushes included),
        # except liveness and Prometheus scraping
        key = state.api_key
        path = request.url.path
        if key and not (path.startswith("/health") or path == "/metrics"):
            given = request.headers.get("authorization") or ""
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                return error_response(401, "missing or wrong API key (Authorization: Bearer ...)",
                                      None, "invalid_api_key")
        return await call_next(request)

    return app


async def health(request: Request) -> Response:
    state = get_state(request)
    if state.client.dead is not None:
        return error_response(503, f"engine is not running: {state.client.dead}", None,
                              "engine_dead", "server_error")
    return JSONResponse({"status": "ok"})


async def health_generate(request: Request) -> Response:
    """Healthy only if the engine actually produces a token."""
    state = get_state(request)
    params = SamplingParams(max_new_tokens=1, temperature=0.0)
    prompt = state.tokenizer.encode("hi") or [0]

    async def run_one() -> None:
        stream = await state.submit(state.new_id("health"), [prompt], params)
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for _ in outs:
                pass

    try:
        await asyncio.wait_for(run_one(), HEALTH_GENERATE_TIMEOUT_S)
    except (TimeoutError, EngineDeadError, APIError, ClientGone) as e:
        return error_response(503, f"generation health check failed: {type(e).__name__} {e}",
                              None, "unhealthy", "server_error")
    return JSONResponse({"status": "ok"})


async def metrics(request: Request) -> Response:
    state = get_state(request)
    m = state.client.metrics
    assert m is not None
    if state.client.dead is None:
        with contextlib.suppress(EngineDeadError, TimeoutError):
            m.update_engine_stats(await state.client.call("stats", timeout=10))
    return Response(m.render(), media_type=CONTENT_TYPE_LATEST)


async def list_models(request: Request) -> Response:
    state = get_state(request)
    return JSONResponse({"object": "list", "data": [{
        "id": state.model_name, "object": "model", "created": int(time.time()),
        "owned_by": "tessera", "root": state.info["model_path"],
        "max_model_len": state.info["context_length"]}]})


async def _engine_call(state: ServerState, method: str, timeout: float) -> Any:
    try:
        return await state.client.call(method, timeout=timeout)
    except EngineDeadError as e:
        raise APIError(503, f"engine is not running: {e}", None, "engine_dead",
                       "server_error") from None
    except TimeoutError:
        raise APIError(503, f"the engine did not answer '{method}' within {timeout:.0f} s", None,
                       "engine_busy", "server_error") from None


async def server_info(request: Request) -> Response:
    state = get_state(request)
    stats = await _engine_call(state, "stats", 10)
    return JSONResponse({"version": tessera.__version__, **state.info, "engine": stats})


async def flush_cache(request: Request) -> Response:
    state = get_state(request)
    if not await _engine_call(state, "flush_cache", 30):
        raise bad_request("cannot flush the cache while requests are running or queued; "
                          "retry when the server is idle", None, "requests_running")
    return JSONResponse({"success": True, "message": "prefix cache flushed"})


async def abort_request(request: Request) -> Response:
    state = get_state(request)
    req: AbortRequest = await parse_body(request, AbortRequest)
    if not state.client.abort_group(req.rid):
        return error_response(404, f"no running request with id '{req.rid}'", "rid",
                              "request_not_found")
    return JSONResponse({"success": True, "rid": req.rid})


# ---- native /generate -------------------------------------------------------------------------
async def generate(request: Request) -> Response:
    """SGLang-style: {"text" | "input_ids", "sampling_params", "stream", "rid"}; streamed chunks
    carry the text so far (not a delta), like SGLang's."""
    state = get_state(request)
    req: GenerateRequest = await parse_body(request, GenerateRequest)
    try:
        params = SamplingParams.from_dict(req.sampling_params)
    except (ValueError, TypeError) as e:
        err = from_value_error(ValueError(str(e)), openai_names=False)
        err.param = f"sampling_params.{err.param}" if err.param else "sampling_params"
        raise err from None
    if params.grammar is not None:
        check_constraint(state, params.grammar, f"sampling_params.{params.grammar[0]}")
    if params.n != 1:
        raise bad_request("/generate runs one sample; use /v1/completions for n > 1",
                          "sampling_params.n")
    ids = req.input_ids if req.input_ids is not None else state.tokenizer.encode(req.text or "")
    param = "input_ids" if req.input_ids is not None else "text"
    rid = req.rid or state.new_id("gen")
    start = time.perf_counter()
    stream = await state.submit(rid, [ids], params, param, openai_names=False)
    if req.stream:
        return ReleasingStreamingResponse(_generate_sse(state, request, stream, rid, start),
                                          release=lambda: state.client.release(stream))
    result = _GenerateResult(rid, start)
    try:
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for out in outs:
                result.add(out)
    except ClientGone:
        return Response(status_code=499)
    except EngineDeadError as e:
        return JSONResponse(error_body(f"the engine stopped: {e}", None, "engine_dead",
                                       "server_error"), status_code=503)
    return JSONResponse(result.body())


class _GenerateResult:
    def __init__(self, rid: str, start: float) -> None:
        self.rid, self.start = rid, start
        self.text = ""
        self.output_ids: list[int] = []
        self.logprobs: list[list[float | int]] = []
        self.last: Any = None

    def add(self, out: Any) -> None:
        self.text += out.new_text
        self.output_ids += out.new_token_ids
        self.logprobs += [[lp, t] for lp, t in zip(out.new_logprobs, out.new_token_ids)]
        self.last = out

    def body(self) -> dict[str, Any]:
        out = self.last
        finish = None
        if out is not None and out.finished:
            finish = {"type": out.finish_reason}
            if out.stop_str is not None:
                finish["matched"] = out.stop_str
        meta: dict[str, Any] = {
            "id": self.rid, "finish_reason": finish,
            "prompt_tokens": out.num_prompt_tokens if out else 0,
            "completion_tokens": out.num_output_tokens if out else 0,
            "cached_tokens": out.num_cached_tokens if out else 0,
            "e2e_latency": time.perf_counter() - self.start}
        if self.logprobs:
            meta["output_token_logprobs"] = self.logprobs
        return {"text": self.text, "output_ids": self.output_ids, "meta_info": meta}


async def _generate_sse(state: ServerState, request: Request, stream: Any, rid: str,
                        start: float) -> AsyncIterator[str]:
    result = _GenerateResult(rid, start)
    try:
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for out in outs:
                result.add(out)
                if out.new_text or out.finished:
                    yield f"data: {json.dumps(result.body(), ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    except ClientGone:
        return
    except EngineDeadError as e:
        yield f"data: {json.dumps(error_body(f'the engine stopped: {e}'))}\n\n"
        yield "data: [DONE]\n\n"
