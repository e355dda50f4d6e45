"""The FastAPI app: OpenAI routes (openai_api.py) plus native, health and admin endpoints."""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

import tessera
from tessera.sampling.params import SamplingParams
from tessera.server import native_api
from tessera.server.engine_client import EngineDeadError
from tessera.server.errors import (
    APIError,
    bad_request,
    error_response,
    install_error_handlers,
    read_body,
)
from tessera.server.openai_api import get_state, router
from tessera.server.state import ClientGone, ServerState, outputs

# /health_generate gives up after this long (a healthy but saturated server may queue it).
HEALTH_GENERATE_TIMEOUT_S = 30.0


# Routes whose body is JSON: only `Content-Type: application/json` reaches them. Browsers send
# that type cross-site only after a CORS preflight, which fails unless --allowed-origins says so;
# "simple" requests (text/plain, forms) never get through.
JSON_ROUTES = frozenset({"/v1/completions", "/v1/chat/completions", "/generate",
                         "/abort_request", "/tokenize", "/detokenize", "/v1/tokenize",
                         "/v1/detokenize"})
# Open without the API key: liveness and Prometheus scraping.
OPEN_ROUTES = frozenset({"/health", "/metrics"})
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def create_app(state: ServerState, allowed_origins: list[str] | None = None) -> FastAPI:
    """The app; with `allowed_origins`, browsers on those origins may call it (CORS)."""
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
    app.add_api_route("/start_profile", start_profile, methods=["POST"])
    app.add_api_route("/stop_profile", stop_profile, methods=["POST"])

    origins = set(allowed_origins or ())

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Response:
        refused = _refusal(request, state.api_key, origins)
        return refused if refused is not None else await call_next(request)

    if origins:
        # added last, so it runs first: it answers preflights before the guard sees them
        app.add_middleware(CORSMiddleware, allow_origins=sorted(origins), allow_methods=["*"],
                           allow_headers=["*"])
    return app


def _refusal(request: Request, api_key: str | None, origins: set[str]) -> Response | None:
    """The error response for a request that must not reach its route, else None."""
    path, method = request.url.path, request.method
    origin = request.headers.get("origin")
    if (method not in _SAFE_METHODS and origin is not None and "*" not in origins
            and origin not in origins and not _same_origin(origin, request)):
        # a browser page elsewhere (a POST with no body or a form needs no preflight)
        return error_response(403, f"cross-site request from {origin} refused; start the "
                              "server with --allowed-origins to allow it", None,
                              "origin_not_allowed")
    if method == "POST":
        ctype = request.headers.get("content-type")
        if (ctype is not None or path in JSON_ROUTES) and not _is_json(ctype):
            return error_response(415, f"Content-Type must be application/json (got "
                                  f"{ctype or 'none'})", None, "unsupported_media_type")
    if api_key and path not in OPEN_ROUTES:
        # every other route needs the key: the native /generate, aborts, cache flushes and
        # /health_generate (it runs a generation) included
        given = request.headers.get("authorization") or ""
        if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
            return error_response(401, "missing or wrong API key (Authorization: Bearer ...)",
                                  None, "invalid_api_key")
    return None


def _is_json(ctype: str | None) -> bool:
    return ctype is not None and ctype.split(";", 1)[0].strip().lower() == "application/json"


def _same_origin(origin: str, request: Request) -> bool:
    host = request.headers.get("host")
    return host is not None and origin.split("://", 1)[-1].lower() == host.lower()


async def health(request: Request) -> Response:
    """200 while the engine process is alive and has been heard from within the stall bound."""
    problem = get_state(request).engine_problem()
    if problem is not None:
        return error_response(503, problem, None, "engine_unhealthy", "server_error")
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


async def _engine_call(state: ServerState, method: str, timeout: float, **args: Any) -> Any:
    try:
        return await state.client.call(method, timeout=timeout, **args)
    except EngineDeadError as e:
        raise APIError(503, f"engine is not running: {e}", None, "engine_dead",
                       "server_error") from None
    except TimeoutError:
        raise APIError(503, f"the engine did not answer '{method}' within {timeout:.0f} s", None,
                       "engine_busy", "server_error") from None


async def server_info(request: Request) -> Response:
    state = get_state(request)
    stats = await _engine_call(state, "stats", 10)
    return JSONResponse({"version": tessera.__version__, **state.info,
                         "engine_pid": state.client.proc.pid, "engine": stats})


async def start_profile(request: Request) -> Response:
    """Start a torch-profiler trace of the engine's steps (tessera.engine.profiler); body
    optional: {"num_steps": N} stops it by itself after N steps."""
    state = get_state(request)
    body = await read_body(request)
    num_steps = None
    if body.strip():
        try:
            args = json.loads(body)
        except ValueError:
            raise bad_request("the body is not valid JSON", None, "invalid_json") from None
        if not isinstance(args, dict) or set(args) - {"num_steps"}:
            raise bad_request("the body takes only num_steps", None, "invalid_request")
        num_steps = args.get("num_steps")
        if num_steps is not None and (type(num_steps) is not int or num_steps < 1):
            raise bad_request("num_steps must be a positive integer", "num_steps",
                              "invalid_value")
    answer = await _engine_call(state, "start_profile", 30, num_steps=num_steps)
    if not answer["success"]:
        raise bad_request(answer["message"], None, "profile_refused")
    return JSONResponse(answer)


async def stop_profile(request: Request) -> Response:
    """Stop the trace and write it; answers its path ("trace")."""
    answer = await _engine_call(get_state(request), "stop_profile", 120)
    if not answer["success"]:
        raise bad_request(answer["message"], None, "profile_not_running")
    return JSONResponse(answer)


async def flush_cache(request: Request) -> Response:
    state = get_state(request)
    if not await _engine_call(state, "flush_cache", 30):
        raise bad_request("cannot flush the cache while requests are running or queued; "
                          "retry when the server is idle", None, "requests_running")
    return JSONResponse({"success": True, "message": "prefix cache flushed"})
