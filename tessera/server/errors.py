"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}.

User input never produces a 500: bad JSON, bad fields and values the engine rejects are 400s whose
message names the field. Internal failures are 500s that carry no stack trace (it goes to the log).
"""
from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)

# Names the engine/SamplingParams use -> the API field a client sent.
_ENGINE_TO_API = {"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"}
# Pieces of a pydantic error location that name a union member, not a field ("list[int]", "str").
_TYPE_TAG = re.compile(r"^([a-z]+\[.*\]|str|int|float|bool|none|[A-Z]\w*|function-\w+\[.*\])$")


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str | None = None, type_: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = (status, message, param,
                                                                       code, type_)

    def __reduce__(self) -> tuple[Any, ...]:
        # raised in tokenizer worker processes: pickle every field, not just the message
        return (APIError, (self.status, self.message, self.param, self.code, self.type))

    def response(self) -> JSONResponse:
        return error_response(self.status, self.message, self.param, self.code, self.type)


def error_body(message: str, param: str | None = None, code: str | None = None,
               type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, param: str | None = None, code: str | None = None,
                   type_: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(error_body(message, param, code, type_), status_code=status)


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param, code)


def from_value_error(e: ValueError, prompt_param: str = "prompt", openai_names: bool = True
                     ) -> APIError:
    """A ValueError from SamplingParams or Engine.validate_prompt; with `openai_names` the engine's
    field names in it become the OpenAI API's (max_new_tokens -> max_tokens)."""
    message = str(e)
    if openai_names:
        for engine_name, api_name in _ENGINE_TO_API.items():
            message = message.replace(engine_name, api_name)
    param = None
    match = re.match(r"^(\w+)", message)
    if match and match.group(1) in ("prompt", *_API_PARAMS):
        param = prompt_param if match.group(1) == "prompt" else match.group(1)
    elif "prompt" in message:
        param = prompt_param
    return bad_request(message, param)


# What a union-typed field accepts, for messages clearer than pydantic's per-member errors.
UNION_HINTS = {
    "prompt": "a string, or a non-empty list of strings, of token ids or of token-id lists",
    "stop": "a string or a list of strings",
    "content": "a string or a non-empty list of {\"type\": \"text\", \"text\": ...} parts",
    "input_ids": "a non-empty list of token ids",
}
_API_PARAMS = ("max_tokens", "min_tokens", "temperature", "top_p", "top_k", "min_p",
               "repetition_penalty", "frequency_penalty", "presence_penalty", "stop",
               "stop_token_ids", "n", "seed", "logprobs", "top_logprobs", "ignore_eos",
               "skip_special_tokens", "logit_bias", "json_schema", "regex", "ebnf",
               "response_format", "tools", "tool_choice", "echo", "prompt_logprobs",
               "require_reasoning")


def from_validation_errors(errors: list[dict[str, Any]], model: type[BaseModel] | None = None
                           ) -> APIError:
    """Pydantic errors -> one 400 naming the first offending field."""
    if not errors:
        return bad_request("invalid request body")
    err = errors[0]
    if err.get("type") == "json_invalid":
        return bad_request(f"malformed JSON body: {err.get('msg')}", None, "invalid_json")
    loc = [str(p) for p in err.get("loc", ()) if p != "body" and not _TYPE_TAG.match(str(p))]
    msg = str(err.get("msg", "invalid value"))
    msg = msg.removeprefix("Value error, ")
    if not loc:
        if err.get("type") in ("model_type", "model_attributes_type", "dict_type"):
            return bad_request("the request body must be a JSON object")
        first = msg.split(" ", 1)[0]
        fields = model.model_fields if model is not None else {}
        return bad_request(msg, first if first in fields else None)
    path = ".".join(loc)
    if err.get("type") == "missing":
        return bad_request(f"'{path}' is a required field", path)
    # unions report one error per member; saying the value matches none of them is clearer
    members = {tuple(e.get("loc", ())[:1]) for e in errors}
    if len(errors) > 1 and len(members) == 1 and any(
            _TYPE_TAG.match(str(p)) for p in err.get("loc", ())):
        expected = UNION_HINTS.get(loc[-1], "one of the accepted forms")
        return bad_request(f"invalid type for '{path}': expected {expected} "
                           f"(got {_short(err.get('input'))})", path)
    return bad_request(f"invalid value for '{path}': {msg} (got {_short(err.get('input'))})",
                       path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# Largest request body read: far above any real prompt (a 128k-token prompt is ~1 MB of JSON), far
# below what would hurt the server's memory.
MAX_BODY_BYTES = 32 << 20


async def read_body(request: Request) -> bytes:
    """The body, refused with 413 once it passes MAX_BODY_BYTES (by its Content-Length, or while
    reading a chunked one) instead of buffering whatever a client sends."""
    too_large = APIError(413, f"request body larger than {MAX_BODY_BYTES >> 20} MiB", None,
                         "request_too_large")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return from_validation_errors(list(exc.errors())).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(exc.status_code, str(exc.detail), None, code)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (details are in the server log)", None,
                              "internal_error", "server_error")
