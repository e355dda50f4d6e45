"""The offline API: `LLM(model=..., **engine_args).generate(prompts, sampling_params)`."""
from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterable, Sequence

from tqdm import tqdm
from typing_extensions import Self

from tessera.config.engine import EngineConfig
from tessera.engine.engine import Engine
from tessera.sampling.params import SamplingParams


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    stop_str: str | None = None
    logprobs: list[float] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


@dataclasses.dataclass
class RequestOutput:
    """One prompt's result. `.text` etc. are the first sample's; `.outputs` holds all n."""
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    num_prompt_tokens: int
    num_cached_tokens: int

    @property
    def text(self) -> str:
        return self.outputs[0].text

    @property
    def token_ids(self) -> list[int]:
        return self.outputs[0].token_ids

    @property
    def finish_reason(self) -> str | None:
        return self.outputs[0].finish_reason


class LLM:
    def __init__(self, model: str | None = None, **engine_args) -> None:
        self.config = EngineConfig.from_kwargs(model_path=model, **engine_args)
        self.engine: Engine | None = Engine(self.config)
        self.tokenizer = self.engine.tokenizer

    def generate(self, prompts: str | Sequence[str] | None = None,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, prompt_token_ids: Sequence[Sequence[int]] | None = None,
                 use_tqdm: bool = False) -> list[RequestOutput]:
        engine = self._engine()
        if (prompts is None) == (prompt_token_ids is None):
            raise ValueError("pass exactly one of prompts or prompt_token_ids")
        texts: list[str | None]
        if prompts is not None:
            texts = [prompts] if isinstance(prompts, str) else list(_sequence(prompts, "prompts"))
            if not all(isinstance(t, str) for t in texts):
                raise TypeError("prompts must be a str or a list of str (token ids go in "
                                "prompt_token_ids=)")
            ids = [self.tokenizer.encode(t) for t in texts]
        else:
            ids = [_token_ids(p) for p in _sequence(prompt_token_ids, "prompt_token_ids")]
            texts = [None] * len(ids)
        if sampling_params is None:
            params = [SamplingParams()] * len(ids)
        elif isinstance(sampling_params, SamplingParams):
            params = [sampling_params] * len(ids)
        else:
            params = list(sampling_params)
            if len(params) != len(ids):
                raise ValueError(f"got {len(params)} sampling params for {len(ids)} prompts")
        # validate everything before running anything
        for p_ids, p in zip(ids, params):
            engine.validate_prompt(p_ids, p)
        rid_of: dict[str, tuple[int, int]] = {}
        for i, (p_ids, p) in enumerate(zip(ids, params)):
            for k in range(p.n):
                sample = p if p.n == 1 else dataclasses.replace(
                    p, n=1, seed=None if p.seed is None else p.seed + k)
                rid_of[engine.add_request(p_ids, sample)] = (i, k)
        results = [[CompletionOutput(k, "", [], None) for k in range(p.n)] for p in params]
        cached = [0] * len(ids)
        bar = tqdm(total=len(rid_of), desc="generating", disable=not use_tqdm)
        while engine.has_unfinished():
            for out in engine.step():
                i, k = rid_of[out.rid]
                c = results[i][k]
                c.text += out.new_text
                c.token_ids.extend(out.new_token_ids)
                if params[i].logprobs:
                    c.logprobs = (c.logprobs or []) + out.new_logprobs
                if params[i].top_logprobs:
                    c.top_logprobs = (c.top_logprobs or []) + out.new_top_logprobs
                if out.finished:
                    c.finish_reason, c.stop_str = out.finish_reason, out.stop_str
                    cached[i] = max(cached[i], out.num_cached_tokens)
                    bar.update(1)
        bar.close()
        return [RequestOutput(t, p_ids, results[i], len(p_ids), cached[i])
                for i, (t, p_ids) in enumerate(zip(texts, ids))]

    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("this LLM was shut down")
        return self.engine

    def shutdown(self) -> None:
        """Frees the engine; with tp > 1 its other ranks stop and this process leaves the world
        (a new LLM may start after)."""
        if self.engine is not None:
            self.engine.shutdown()
        self.engine = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()


def _sequence(value, name: str) -> Iterable:
    """A list-like of prompts (any iterable but a string, which is one prompt, not many)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list, got {type(value).__name__}")
    return value


def _token_ids(prompt) -> list[int]:
    """One prompt's ids as Python ints (lists, tuples, numpy arrays, int tensors)."""
    try:
        return [operator.index(t) for t in _sequence(prompt, "each prompt of prompt_token_ids")]
    except TypeError as e:
        raise TypeError(f"prompt_token_ids must be lists of int token ids: {e}") from None
