"""The FastAPI app: OpenAI routes (openai_api.py) plus native, health and admin endpoints."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

import tessera
from tessera.sampling.params import SamplingParams
from tessera.server import native_api
from tessera.server.engine_client import EngineDeadError
from tessera.server.errors import APIError, bad_request, error_response, install_error_handlers
from tessera.server.openai_api import get_state, router
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
    app.add_api_route("/v1/models/{model_id:path}", get_model, methods=["GET"])
    app.add_api_route("/generate", native_api.generate, methods=["POST"])
    app.add_api_route("/abort_request", native_api.abort_request, methods=["POST"])
    app.add_api_route("/get_model_info", native_api.get_model_info, methods=["GET"])
    for path, endpoint in (("tokenize", native_api.tokenize),
                           ("detokenize", native_api.detokenize)):
        app.add_api_route(f"/{path}", endpoint, methods=["POST"])
        app.add_api_route(f"/v1/{path}", endpoint, methods=["POST"])
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


def _model_card(state: ServerState) -> dict[str, Any]:
    return {"id": state.model_name, "object": "model", "created": int(time.time()),
            "owned_by": "tessera", "root": state.info["model_path"],
            "max_model_len": state.info["context_length"]}


async def list_models(request: Request) -> Response:
    return JSONResponse({"object": "list", "data": [_model_card(get_state(request))]})


async def get_model(request: Request, model_id: str) -> Response:
    state = get_state(request)
    if model_id not in (state.model_name, state.info["model_path"]):
        return error_response(404, f"model '{model_id}' does not exist; this server serves "
                              f"'{state.model_name}'", "model", "model_not_found")
    return JSONResponse(_model_card(state))


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
