"""SGLang's native endpoints as its users call them (/generate, /abort_request,
/get_model_info) and vLLM's /tokenize and /detokenize."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from tessera.sampling.params import SamplingParams
from tessera.server.engine_client import EngineDeadError
from tessera.server.errors import bad_request, error_body, error_response, from_value_error
from tessera.server.openai_api import ReleasingStreamingResponse, check_constraint, get_state
from tessera.server.protocol import (
    AbortRequest,
    DetokenizeRequest,
    GenerateRequest,
    TokenizeRequest,
)
from tessera.server.state import ClientGone, ServerState, choice_index, outputs


def _params(state: ServerState, raw: dict[str, Any], req: GenerateRequest, param: str
            ) -> SamplingParams:
    if req.require_reasoning:  # SGLang's place for it; sampling_params may say it too
        raw = {**raw, "require_reasoning": True}
    try:
        params = SamplingParams.from_dict(raw)
    except (ValueError, TypeError) as e:
        err = from_value_error(ValueError(str(e)), openai_names=False)
        err.param = f"{param}.{err.param}" if err.param else param
        raise err from None
    if params.grammar is not None:
        check_constraint(state, params.grammar, f"{param}.{params.grammar[0]}")
    if req.return_logprob:
        params = dataclasses.replace(
            params, logprobs=True, top_logprobs=req.top_logprobs_num,
            prompt_logprobs=req.top_logprobs_num if req.logprob_start_len >= 0 else None)
    return params


async def generate(request: Request) -> Response:
    """{"text" | "input_ids" (one or a batch), "sampling_params" (one, or one per prompt),
    "stream", "rid", "return_logprob", "logprob_start_len", "top_logprobs_num",
    "require_reasoning"}. One prompt with n = 1 answers an object; a batch or n > 1 a list
    (prompt i's sample k at i * n + k). Streamed chunks carry the text so far (not a delta) and
    their `index`, like SGLang's."""
    state = get_state(request)
    # parsed and tokenized off the event loop when large
    prep = await state.prepare("generate", request)
    req: GenerateRequest = prep.request
    prompts = prep.prompts
    assert prompts is not None
    param = "input_ids" if req.input_ids is not None else "text"
    raw = req.sampling_params
    if isinstance(raw, list):
        if len(raw) != len(prompts):
            raise bad_request(f"sampling_params: {len(raw)} given for {len(prompts)} prompts",
                              "sampling_params")
        params = [_params(state, r, req, f"sampling_params[{i}]") for i, r in enumerate(raw)]
    else:
        params = [_params(state, raw, req, "sampling_params")] * len(prompts)
    if len({p.n for p in params}) > 1:
        raise bad_request("sampling_params: n must be the same for every prompt",
                          "sampling_params")
    rid = req.rid or state.new_id("gen")
    start = time.perf_counter()
    stream = await state.submit(rid, prompts, params, param, openai_names=False)
    n = params[0].n
    results = [_GenerateResult(f"{rid}-{i}" if req.is_batch or n > 1 else rid, start, req,
                               prompts[i // n], state)
               for i in range(len(prompts) * n)]
    single = not req.is_batch and n == 1
    if req.stream:
        return ReleasingStreamingResponse(_generate_sse(state, request, stream, results, single),
                                          release=lambda: state.client.release(stream))
    try:
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for out in outs:
                results[choice_index(out.rid)].add(out)
    except ClientGone:
        return Response(status_code=499)
    except EngineDeadError as e:
        return JSONResponse(error_body(f"the engine stopped: {e}", None, "engine_dead",
                                       "server_error"), status_code=503)
    bodies = [r.body() for r in results]
    return JSONResponse(bodies[0] if single else bodies)


class _GenerateResult:
    def __init__(self, rid: str, start: float, req: GenerateRequest, prompt: list[int],
                 state: ServerState) -> None:
        self.rid, self.start, self.req, self.prompt, self.state = rid, start, req, prompt, state
        self.text = ""
        self.output_ids: list[int] = []
        self.logprobs: list[list[Any]] = []
        self.top_logprobs: list[list[list[Any]]] = []
        self.input_logprobs: list[list[Any]] = []
        self.input_top_logprobs: list[Any] = []
        self.last: Any = None

    def _entry(self, lp: float | None, tid: int) -> list[Any]:
        text = self.state.token_str(tid) if self.req.return_text_in_logprobs else None
        return [lp, tid, text]

    def add(self, out: Any) -> None:
        self.text += out.new_text
        self.output_ids += out.new_token_ids
        self.logprobs += [self._entry(lp, t) for lp, t in zip(out.new_logprobs,
                                                               out.new_token_ids)]
        self.top_logprobs += [[self._entry(lp, t) for t, lp in top]
                              for top in out.new_top_logprobs]
        if out.prompt_logprobs is not None:
            begin = self.req.logprob_start_len
            lps = [(None, [])] + list(out.prompt_logprobs)
            self.input_logprobs = [self._entry(lp, t) for (lp, _), t
                                   in zip(lps[begin:], self.prompt[begin:])]
            self.input_top_logprobs = [[self._entry(v, t) for t, v in top] or None
                                       for _, top in lps[begin:]]
        self.last = out

    def body(self) -> dict[str, Any]:
        out = self.last
        finish = None
        if out is not None and out.finished:
            finish = {"type": out.finish_reason}
            if out.stop_str is not None:
                finish["matched"] = out.stop_str
            elif out.finish_reason == "stop" and self.output_ids:
                finish["matched"] = self.output_ids[-1]
        meta: dict[str, Any] = {
            "id": self.rid, "finish_reason": finish,
            "prompt_tokens": out.num_prompt_tokens if out else len(self.prompt),
            "completion_tokens": out.num_output_tokens if out else 0,
            "cached_tokens": out.num_cached_tokens if out else 0,
            "e2e_latency": time.perf_counter() - self.start}
        if self.req.return_logprob:
            meta["output_token_logprobs"] = self.logprobs
            meta["input_token_logprobs"] = self.input_logprobs
            if self.req.top_logprobs_num:
                meta["output_top_logprobs"] = self.top_logprobs
                meta["input_top_logprobs"] = self.input_top_logprobs
        return {"text": self.text, "output_ids": self.output_ids, "meta_info": meta}


async def _generate_sse(state: ServerState, request: Request, stream: Any,
                        results: list[_GenerateResult], single: bool) -> AsyncIterator[str]:
    try:
        async with contextlib.aclosing(outputs(state, request, stream)) as outs:
            async for out in outs:
                index = choice_index(out.rid)
                result = results[index]
                result.add(out)
                if out.new_text or out.finished:
                    body = result.body() if single else {**result.body(), "index": index}
                    yield f"data: {json.dumps(body, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"
    except ClientGone:
        return
    except EngineDeadError as e:
        yield f"data: {json.dumps(error_body(f'the engine stopped: {e}'))}\n\n"
        yield "data: [DONE]\n\n"


async def abort_request(request: Request) -> Response:
    """{"rid": ...} aborts one request (404 if none); {"abort_all": true} every running one."""
    state = get_state(request)
    req: AbortRequest = (await state.prepare("abort", request)).request
    if req.abort_all:
        return JSONResponse({"success": True, "aborted": state.client.abort_all()})
    assert req.rid is not None
    if not state.client.abort_group(req.rid):
        return error_response(404, f"no running request with id '{req.rid}'", "rid",
                              "request_not_found")
    return JSONResponse({"success": True, "rid": req.rid})


async def get_model_info(request: Request) -> Response:
    state = get_state(request)
    info = state.info
    return JSONResponse({"model_path": info["model_path"],
                         "tokenizer_path": info["tokenizer_path"], "is_generation": True,
                         "served_model_name": state.model_name,
                         "architecture": info["architecture"],
                         "context_length": info["context_length"],
                         "vocab_size": info["vocab_size"],
                         "eos_token_ids": info["eos_token_ids"]})


async def tokenize(request: Request) -> Response:
    state = get_state(request)
    prep = await state.prepare("tokenize", request)  # templated and tokenized there
    req: TokenizeRequest = prep.request
    state.check_model(req.model)
    assert prep.prompts is not None
    ids = prep.prompts[0]
    body: dict[str, Any] = {"tokens": ids, "count": len(ids),
                            "max_model_len": state.info["context_length"]}
    body["token_strs"] = state.tokenizer.pieces(ids) if req.return_token_strs else None
    return JSONResponse(body)


async def detokenize(request: Request) -> Response:
    state = get_state(request)
    prep = await state.prepare("detokenize", request)  # decoded there
    req: DetokenizeRequest = prep.request
    state.check_model(req.model)
    bad = [t for t in req.tokens if not 0 <= t < state.info["vocab_size"]]
    if bad:
        raise bad_request(f"tokens outside the vocabulary [0, {state.info['vocab_size']}): "
                          f"{bad[:5]}", "tokens")
    assert prep.texts is not None
    return JSONResponse({"prompt": prep.texts[0]})
