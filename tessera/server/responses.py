"""Response bodies of the OpenAI endpoints: per-choice accumulation, usage, logprobs shapes."""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

from tessera.engine.engine import StepOutput

# token id -> its text in logprobs (or "token_id:<id>" with vLLM's return_tokens_as_token_ids)
TokenName = Callable[[int], str]


@dataclasses.dataclass
class ResponseMeta:
    id: str
    object: str
    created: int
    model: str
    prompt_lens: list[int]
    n: int
    chat: bool
    prompts: list[list[int]] = dataclasses.field(default_factory=list)
    echo_texts: list[str] = dataclasses.field(default_factory=list)  # completions echo: per prompt
    stop_token_ids: frozenset[int] = frozenset()
    continuous_usage: bool = False   # stream_options.continuous_usage_stats
    token_name: TokenName = str      # how logprobs name a token (set per request)
    echo_logprobs: bool = False      # completions: echo with logprobs
    vllm_prompt_logprobs: bool = False  # vLLM's prompt_logprobs (chat: on the response)


@dataclasses.dataclass
class Choice:
    index: int
    text: str = ""
    token_ids: list[int] = dataclasses.field(default_factory=list)
    logprobs: list[float] = dataclasses.field(default_factory=list)
    top_logprobs: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    prompt_logprobs: list[tuple[float, list[tuple[int, float]]]] | None = None
    finish_reason: str | None = None
    stop_str: str | None = None
    num_output_tokens: int = 0
    num_cached_tokens: int = 0
    text_offset: int = 0  # completions logprobs: offset of the next token in the text
    chat: Any = None      # server.chat.ChatOutput for chat choices

    def add(self, out: StepOutput) -> None:
        self.text += out.new_text
        self.token_ids += out.new_token_ids
        self.logprobs += out.new_logprobs
        self.top_logprobs += out.new_top_logprobs
        self.num_output_tokens = out.num_output_tokens
        self.num_cached_tokens = out.num_cached_tokens
        if out.prompt_logprobs is not None:
            self.prompt_logprobs = out.prompt_logprobs
        if out.finished:
            self.finish_reason = out.finish_reason
            self.stop_str = out.stop_str

    def stop_fields(self, meta: ResponseMeta) -> dict[str, Any]:
        """vLLM's `stop_reason` (the stop string or stop_token_ids entry that ended the choice,
        None for EOS) and SGLang's `matched_stop` (the same, or the EOS token id)."""
        if self.finish_reason != "stop":
            return {"stop_reason": None, "matched_stop": None}
        if self.stop_str is not None:
            return {"stop_reason": self.stop_str, "matched_stop": self.stop_str}
        last = self.token_ids[-1] if self.token_ids else None
        return {"stop_reason": last if last in meta.stop_token_ids else None,
                "matched_stop": last}


def usage(meta: ResponseMeta, choices: list[Choice]) -> dict[str, Any]:
    prompt = sum(meta.prompt_lens)
    completion = sum(c.num_output_tokens for c in choices)
    # cached tokens count once per prompt, like its prompt tokens
    cached = sum(max(c.num_cached_tokens for c in choices[i * meta.n:(i + 1) * meta.n])
                 for i in range(len(meta.prompt_lens)))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _top_dict(name: TokenName, chosen: tuple[int, float] | None,
              top: list[tuple[int, float]]) -> dict[str, float]:
    """OpenAI completions' top_logprobs entry: the alternatives plus the chosen token (as vLLM
    reports it, so logprobs=0 still names the sampled token)."""
    out: dict[str, float] = {}
    for t, lp in top if chosen is None else [*top, chosen]:
        key = name(t)   # tokens whose texts collide (lone bytes: U+FFFD) keep the best logprob
        out[key] = max(lp, out.get(key, lp))
    return out


def completion_logprobs(name: TokenName, choice: Choice, ids: list[int], lps: list[float],
                        tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
    tokens = [name(t) for t in ids]
    offsets = []
    for tok in tokens:
        offsets.append(choice.text_offset)
        choice.text_offset += len(tok)
    return {"tokens": tokens, "token_logprobs": list(lps),
            "top_logprobs": [_top_dict(name, (t, lp), tops[j] if j < len(tops) else [])
                             for j, (t, lp) in enumerate(zip(ids, lps))],
            "text_offset": offsets}


def echo_logprobs(name: TokenName, choice: Choice, prompt: list[int]) -> dict[str, Any]:
    """The prompt's part of completions logprobs with echo: the first token has none."""
    lps = choice.prompt_logprobs or []
    part = completion_logprobs(name, choice, prompt[1:], [lp for lp, _ in lps],
                               [top for _, top in lps])
    first = name(prompt[0])
    choice.text_offset += len(first)
    return {"tokens": [first, *part["tokens"]],
            "token_logprobs": [None, *part["token_logprobs"]],
            "top_logprobs": [None, *part["top_logprobs"]],
            "text_offset": [0, *[o + len(first) for o in part["text_offset"]]]}


def vllm_prompt_logprobs(name: TokenName, choice: Choice,
                         prompt: list[int]) -> list[dict[str, dict[str, Any]] | None]:
    """vLLM's `prompt_logprobs`: per prompt token (the first has none) a dict keyed by token id of
    its top alternatives and the token itself, each with its logprob, rank and decoded text."""
    out: list[dict[str, dict[str, Any]] | None] = [None]
    for tid, (lp, top) in zip(prompt[1:], choice.prompt_logprobs or []):
        entry = {str(t): {"logprob": v, "rank": r, "decoded_token": name(t)}
                 for r, (t, v) in enumerate(top, start=1)}
        if str(tid) not in entry:
            rank = 1 + sum(1 for _, v in top if v > lp)
            entry[str(tid)] = {"logprob": lp, "rank": rank, "decoded_token": name(tid)}
        out.append(entry)
    return out


def merge_logprobs(a: dict[str, Any] | None, b: dict[str, Any] | None) -> dict[str, Any] | None:
    if a is None or b is None:
        return a or b
    return {k: a[k] + b[k] for k in a}


def chat_logprobs(name: TokenName, ids: list[int], lps: list[float],
                  tops: list[list[tuple[int, float]]]) -> dict[str, Any]:
    def entry(tid: int, lp: float) -> dict[str, Any]:
        tok = name(tid)
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}

    content = []
    for j, (tid, lp) in enumerate(zip(ids, lps)):
        top = tops[j] if j < len(tops) else []
        content.append({**entry(tid, lp), "top_logprobs": [entry(t, v) for t, v in top]})
    return {"content": content}


def sse_event(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
