"""Request bodies of the OpenAI-compatible and native APIs (pydantic, strict types).

Strict: "abc" or true is never silently coerced into a number; an int is accepted where a float is
expected (JSON has one number type). Ranges that OpenAI documents are checked here so the error names
the API's field; the rest is checked by SamplingParams (which uses the same field names).
Every field OpenAI documents is either declared here and implemented, or listed in `REFUSED`:
sending it (with a value other than its no-op default) is a 400 naming it. Unknown fields are
accepted and ignored (as OpenAI does), and logged at info once per field name (state.ServerState.prepare).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tessera.server.errors import bad_request

# OpenAI allows up to 4 stop sequences; more are harmless here, but keep a bound on the work.
MAX_STOP = 16


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class StreamOptions(_Strict):
    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM: usage on every chunk


def _is_none(v: Any) -> bool:
    return v is None


# OpenAI fields tessera does not implement: field -> (is this value a no-op?, why refused).
_TEXT_ONLY = (None, ["text"])
_DEFAULT_TIER = (None, "auto", "default")
REFUSED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "audio": (_is_none, "audio output is not supported"),
    "modalities": (lambda v: v in _TEXT_ONLY, "only the text modality is supported"),
    "prediction": (_is_none, "predicted outputs are not supported"),
    "functions": (_is_none, "the deprecated functions API is not supported; use tools"),
    "function_call": (_is_none, "deprecated and not supported; use tool_choice"),
    "web_search_options": (_is_none, "web search is not supported"),
    "reasoning_effort": (_is_none, "not configurable; see chat_template_kwargs"),
    "verbosity": (_is_none, "verbosity is not supported"),
    "store": (lambda v: v in (None, False), "stored completions are not supported"),
    "metadata": (lambda v: not v, "it belongs to stored completions (not supported)"),
    "service_tier": (lambda v: v in _DEFAULT_TIER, "only the default tier exists"),
    "prompt_cache_key": (_is_none, "prefix caching is automatic, without keys"),
    "safety_identifier": (_is_none, "safety identifiers are not supported"),
    "suffix": (lambda v: not v, "suffix (insertion) is not supported"),
    # extras of SGLang / vLLM that tessera does not implement (their peers' tests send them)
    "stop_regex": (lambda v: not v, "regex stops are not supported; use stop or stop_token_ids"),
    "allowed_token_ids": (_is_none, "use logit_bias or a guided_choice / regex constraint"),
    "use_beam_search": (lambda v: v in (None, False), "beam search is not supported"),
    "guided_decoding_backend": (lambda v: v in (None, "auto", "xgrammar"),
                                ("guided_* constraints run on the server's grammar backend "
                                 "(xgrammar); no other can be chosen per request")),
    "guided_whitespace_pattern": (_is_none, "the JSON grammar's whitespace is fixed"),
    "structured_outputs": (_is_none, ("use response_format or guided_json / guided_regex / "
                                      "guided_grammar / guided_choice")),
}


def check_refused(req: BaseModel) -> None:
    """A 400 naming the first refused field the request sets to something that is not a no-op."""
    for name, value in (req.model_extra or {}).items():
        entry = REFUSED.get(name)
        if entry is not None and not entry[0](value):
            raise bad_request(f"{name} is not supported by this server: {entry[1]}", name)


class SamplingFields(_Strict):
    """Fields shared by /v1/completions and /v1/chat/completions."""
    model: str | None = None
    n: Annotated[int, Field(ge=1, le=128)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | Annotated[list[str], Field(max_length=MAX_STOP)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    # a 64-bit integer, as OpenAI documents it (and vLLM checks)
    seed: Annotated[int, Field(ge=-(1 << 63), le=(1 << 63) - 1)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    user: str | None = None
    # extras (vLLM/SGLang names)
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    rid: str | None = None  # optional client-chosen id (for /abort_request)
    return_tokens_as_token_ids: bool = False  # vLLM: logprobs name tokens "token_id:<id>"
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    # structured output (SGLang's extra fields); at most one
    json_schema: str | dict[str, Any] | None = None
    regex: str | None = None
    ebnf: str | None = None
    # the same constraints under vLLM's names; guided_choice: the output is one of the strings
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    guided_choice: Annotated[list[Annotated[str, Field(min_length=1)]],
                             Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _check_stream_options(self) -> SamplingFields:
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def extra_constraints(self) -> list[tuple[str, tuple[str, str]]]:
        """(the field that set it, (grammar kind, text)) of each output constraint given through
        SGLang's or vLLM's extra fields, in field order."""
        given = []
        for name, kind in _CONSTRAINT_FIELDS:
            value = getattr(self, name)
            if value is None:
                continue
            if name == "guided_choice":
                value = "|".join(f"({_regex_literal(c)})" for c in value)
            given.append((name, (kind, value if isinstance(value, str) else json.dumps(value))))
        return given


# request field -> the SamplingParams grammar it sets
_CONSTRAINT_FIELDS = (("json_schema", "json_schema"), ("regex", "regex"), ("ebnf", "ebnf"),
                      ("guided_json", "json_schema"), ("guided_regex", "regex"),
                      ("guided_grammar", "ebnf"), ("guided_choice", "regex"))
_REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}")


def _regex_literal(text: str) -> str:
    """`text` as a regex that matches exactly it (re.escape also escapes characters such as # and
    space, which are not escapes every grammar backend's regex dialect knows)."""
    return "".join("\\" + ch if ch in _REGEX_SPECIAL else ch for ch in text)


Prompt = (str | Annotated[list[str], Field(min_length=1)] | Annotated[list[int], Field(min_length=1)]
          | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)])


class CompletionRequest(SamplingFields):
    prompt: Prompt
    max_tokens: Annotated[int, Field(ge=0)] | None = 16
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    echo: bool = False
    best_of: int | None = None
    # vLLM's extra: each choice carries `prompt_logprobs`, per prompt token a dict of the top
    # alternatives plus the token itself (the first token: null); not on streamed responses
    prompt_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None

    @model_validator(mode="after")
    def _check_unsupported(self) -> CompletionRequest:
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens must be >= 1 (0 is allowed only with echo)")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of must equal n when given (best_of > n is not supported)")
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs is not supported with stream")
        return self


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    arguments: str


class ToolCall(_Strict):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | Annotated[list[TextPart], Field(min_length=1)] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates read it (tool calls' arguments as objects, as HF
        templates expect)."""
        out: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name:
            out["name"] = self.name
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.reasoning_content is not None:
            out["reasoning_content"] = self.reasoning_content
        if self.tool_calls:
            calls = []
            for call in self.tool_calls:
                try:
                    args: Any = json.loads(call.function.arguments)
                except ValueError:
                    args = call.function.arguments
                calls.append({"id": call.id, "type": "function",
                              "function": {"name": call.function.name, "arguments": args}})
            out["tool_calls"] = calls
        return out


class FunctionDef(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDef


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("response_format of type json_schema needs its json_schema object")
        return self


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    prompt_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # vLLM's, as on completions
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # vLLM / SGLang extras
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    separate_reasoning: bool = True

    @model_validator(mode="after")
    def _check_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        if self.prompt_logprobs is not None and self.stream:
            raise ValueError("prompt_logprobs is not supported with stream")
        if self.continue_final_message and self.add_generation_prompt:
            if "add_generation_prompt" in self.model_fields_set:
                raise ValueError("continue_final_message and add_generation_prompt cannot both "
                                 "be true")
            self.add_generation_prompt = False
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs the last message to be the "
                             "assistant's")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = [t.function.name for t in self.tools or ()]
            if self.tool_choice.function.name not in names:
                raise ValueError(f"tool_choice names function "
                                 f"'{self.tool_choice.function.name}', which is not in tools")
        if self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs tools")
        return self


class GenerateRequest(_Strict):
    """Native /generate (SGLang's): one prompt or a batch, as text or token ids; per-prompt
    values may be lists (one per prompt)."""
    text: str | Annotated[list[str], Field(min_length=1)] | None = None
    input_ids: (Annotated[list[int], Field(min_length=1)]
                | Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]
                | None) = None
    sampling_params: dict[str, Any] | Annotated[list[dict[str, Any]], Field(min_length=1)] = (
        Field(default_factory=dict))
    stream: bool = False
    rid: str | None = None
    return_logprob: bool = False
    # prompt positions from which input_token_logprobs start (-1: none, only the output's)
    logprob_start_len: int = -1
    top_logprobs_num: Annotated[int, Field(ge=0, le=20)] = 0
    return_text_in_logprobs: bool = False
    # SGLang's: the prompts' outputs open with reasoning; their constraint starts after </think>
    require_reasoning: bool = False

    @model_validator(mode="after")
    def _one_prompt(self) -> GenerateRequest:
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("input_ids or text: give exactly one of them")
        if self.logprob_start_len < -1:
            raise ValueError("logprob_start_len must be -1 (output only) or a prompt position")
        return self

    @property
    def is_batch(self) -> bool:
        return isinstance(self.text, list) or (
            isinstance(self.input_ids, list) and isinstance(self.input_ids[0], list))


class AbortRequest(_Strict):
    rid: str | None = None
    abort_all: bool = False

    @model_validator(mode="after")
    def _one_target(self) -> AbortRequest:
        if (self.rid is None) == (not self.abort_all):
            raise ValueError("rid or abort_all: give a rid, or abort_all true")
        return self


class TokenizeRequest(_Strict):
    """vLLM's /tokenize: a prompt, or chat messages rendered by the chat template."""
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    tools: list[Tool] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    return_token_strs: bool = False

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt or messages: give exactly one of them")
        if self.continue_final_message:
            if self.messages is None or self.messages[-1].role != "assistant":
                raise ValueError("continue_final_message needs messages whose last one is the "
                                 "assistant's")
            if "add_generation_prompt" in self.model_fields_set and self.add_generation_prompt:
                raise ValueError("continue_final_message and add_generation_prompt cannot both "
                                 "be true")
            self.add_generation_prompt = False
        return self


class DetokenizeRequest(_Strict):
    model: str | None = None
    tokens: list[int]
