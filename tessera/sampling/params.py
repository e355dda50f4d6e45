"""Per-request sampling parameters: the public `tessera.SamplingParams`.

Field names follow SGLang/vLLM so requests port over unchanged. Every value a user can get wrong is
checked here, once, with a message that names the field and its allowed range: the sampler and the
scheduler downstream trust these values and do not re-check them on the hot path.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from collections.abc import Mapping
from typing import Any

# Below this temperature sampling is argmax: dividing logits by ~0 overflows to inf/NaN, and the
# distribution is a point mass to within float precision anyway (vLLM uses the same cut-off).
GREEDY_TEMPERATURE_EPS = 1e-5
MAX_N = 128
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 100.0  # OpenAI's range for logit_bias values: [-100, 100]
GRAMMAR_FIELDS = ("json_schema", "regex", "ebnf")
# The tag that closes a reasoning model's thinking (Qwen3, DeepSeek-R1): with require_reasoning the
# output constraint starts after it. The engine needs it to be one token of the vocabulary.
THINK_END = "</think>"


@dataclasses.dataclass
class SamplingParams:
    """How to sample one request. Construct with keywords; invalid values raise ValueError.

    After construction `stop` is always a list of distinct non-empty strings and `stop_token_ids`
    a list of distinct ids (both possibly empty), whatever form they were given in.
    """

    max_new_tokens: int = 128
    """Most tokens to generate (>= 0)."""
    min_new_tokens: int = 0
    """EOS and `stop_token_ids` cannot be sampled before this many tokens (0..max_new_tokens)."""
    temperature: float = 1.0
    """Softmax temperature (>= 0); 0 means greedy (argmax)."""
    top_p: float = 1.0
    """Nucleus sampling: keep the smallest set of most likely tokens with mass >= top_p, (0, 1]."""
    top_k: int = -1
    """Keep only the k most likely tokens; -1 keeps all."""
    min_p: float = 0.0
    """Drop tokens whose probability is below min_p * (the top token's probability), [0, 1]."""
    repetition_penalty: float = 1.0
    """HF-style penalty on tokens seen in prompt or output, (0, 2]; 1 is off, > 1 discourages."""
    frequency_penalty: float = 0.0
    """OpenAI-style: subtract penalty * (count in output) from the logit, [-2, 2]."""
    presence_penalty: float = 0.0
    """OpenAI-style: subtract penalty from the logit of each token already output, [-2, 2]."""
    stop: str | list[str] | None = None
    """Stop strings; the output ends before the first one and does not include it."""
    stop_token_ids: list[int] | None = None
    """Token ids that end the output (like EOS) in addition to the model's EOS."""
    ignore_eos: bool = False
    """Keep generating past EOS (benchmarks)."""
    skip_special_tokens: bool = True
    """Leave special tokens out of the detokenized text."""
    n: int = 1
    """Number of independent samples for the prompt (1..128)."""
    seed: int | None = None
    """Makes sampling reproducible: the same seed gives the same tokens whatever else is batched."""
    logprobs: bool = False
    """Return the log-probability of each generated token."""
    top_logprobs: int = 0
    """Also return this many most likely alternatives per position (0..20); needs logprobs."""
    prompt_logprobs: int | None = None
    """Log-probability of every prompt token after the first (given the tokens before it) plus
    this many most likely alternatives per position (0..20); None: off. Such a request computes
    its whole prompt (no prefix-cache reuse), since cached tokens have no logits."""
    logit_bias: dict[int, float] | None = None
    """token id -> value added to its logit before sampling, values in [-100, 100] (OpenAI's)."""
    json_schema: str | None = None
    """Constrain the output to JSON matching this schema (a JSON string); needs a grammar
    backend. At most one of json_schema / regex / ebnf."""
    regex: str | None = None
    """Constrain the output to a full match of this regular expression."""
    ebnf: str | None = None
    """Constrain the output to this EBNF grammar (GBNF syntax, start rule `root`)."""
    require_reasoning: bool = False
    """The output opens with the model's reasoning, which ends at the THINK_END token
    (`</think>`): the constraint applies only after that token (the reasoning and the token
    itself are unconstrained). Needs an output constraint and a tokenizer that has `</think>` as
    one token (SGLang's name)."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (and normalize types: ints, floats, stop lists); raise ValueError.

        Called by the constructor; call it again after mutating a field.
        """
        for name in ("max_new_tokens", "min_new_tokens", "top_k", "n", "top_logprobs"):
            setattr(self, name, _as_int(name, getattr(self, name)))
        for name in ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty",
                     "presence_penalty"):
            setattr(self, name, _as_float(name, getattr(self, name)))
        for name in ("ignore_eos", "skip_special_tokens", "logprobs", "require_reasoning"):
            _check_bool(name, getattr(self, name))
        if self.seed is not None:
            self.seed = _as_int("seed", self.seed)
        self.stop = _normalize_stop(self.stop)
        self.stop_token_ids = _normalize_stop_token_ids(self.stop_token_ids)

        _check_range("max_new_tokens", self.max_new_tokens, ">= 0", self.max_new_tokens >= 0)
        _check_range("min_new_tokens", self.min_new_tokens,
                     f"[0, max_new_tokens={self.max_new_tokens}]",
                     0 <= self.min_new_tokens <= self.max_new_tokens)
        _check_range("temperature", self.temperature, ">= 0 (0 means greedy)",
                     self.temperature >= 0)
        _check_range("top_p", self.top_p, "(0, 1]", 0 < self.top_p <= 1)
        _check_range("top_k", self.top_k, "-1 (off) or >= 1", self.top_k == -1 or self.top_k >= 1)
        _check_range("min_p", self.min_p, "[0, 1]", 0 <= self.min_p <= 1)
        _check_range("repetition_penalty", self.repetition_penalty, "(0, 2]",
                     0 < self.repetition_penalty <= 2)
        _check_range("frequency_penalty", self.frequency_penalty, "[-2, 2]",
                     -2 <= self.frequency_penalty <= 2)
        _check_range("presence_penalty", self.presence_penalty, "[-2, 2]",
                     -2 <= self.presence_penalty <= 2)
        _check_range("n", self.n, f"[1, {MAX_N}]", 1 <= self.n <= MAX_N)
        _check_range("top_logprobs", self.top_logprobs, f"[0, {MAX_TOP_LOGPROBS}]",
                     0 <= self.top_logprobs <= MAX_TOP_LOGPROBS)
        if self.top_logprobs > 0 and not self.logprobs:
            raise ValueError(f"top_logprobs={self.top_logprobs} needs logprobs=True")
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = _as_int("prompt_logprobs", self.prompt_logprobs)
            _check_range("prompt_logprobs", self.prompt_logprobs, f"[0, {MAX_TOP_LOGPROBS}]",
                         0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS)
        self.logit_bias = _normalize_logit_bias(self.logit_bias)
        grammars = [name for name in GRAMMAR_FIELDS if getattr(self, name) is not None]
        for name in grammars:
            if not isinstance(getattr(self, name), str):
                raise _wrong_type(name, "a string", getattr(self, name))
        if len(grammars) > 1:
            raise ValueError(f"{' and '.join(grammars)}: give at most one output constraint")
        if self.require_reasoning and not grammars:
            raise ValueError("require_reasoning needs an output constraint (json_schema, regex or "
                             "ebnf): it makes the constraint start after the reasoning's "
                             f"{THINK_END}")

    @property
    def grammar(self) -> tuple[str, str] | None:
        """(kind, text) of the output constraint: kind is one of GRAMMAR_FIELDS; None if none."""
        for name in GRAMMAR_FIELDS:
            value = getattr(self, name)
            if value is not None:
                return name, value
        return None

    @property
    def is_greedy(self) -> bool:
        """True when sampling is a plain argmax (temperature ~0, or top_k == 1)."""
        return self.temperature < GREEDY_TEMPERATURE_EPS or self.top_k == 1

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SamplingParams:
        """Build from a request's JSON object; unknown keys are an error, not silently dropped."""
        if not isinstance(d, Mapping):
            raise _wrong_type("sampling params", "an object", d)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in d if k not in names]
        if unknown:
            hints = []
            for k in unknown:
                close = difflib.get_close_matches(str(k), names, n=1)
                hints.append(f"{k!r} (did you mean {close[0]!r}?)" if close else repr(k))
            raise ValueError(f"unknown sampling parameter(s): {', '.join(hints)}; "
                             f"allowed: {', '.join(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _wrong_type(name: str, expected: str, value: object) -> ValueError:
    # ValueError, not TypeError: the server answers ValueError with HTTP 400, and to a client a
    # string where a number belongs is just another bad value.
    return ValueError(f"{name} must be {expected}, got {value!r} ({type(value).__name__})")


def _as_int(name: str, value: object) -> int:
    # bool is an int subclass in Python: True as max_new_tokens is a client bug, not 1.
    if isinstance(value, bool):
        raise _wrong_type(name, "an integer", value)
    if isinstance(value, numbers.Integral):
        return int(value)
    # JSON numbers like 16.0 arrive as floats; accept them when they are whole (as pydantic does).
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    raise _wrong_type(name, "an integer", value)


def _as_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise _wrong_type(name, "a number", value)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return out


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise _wrong_type(name, "true or false", value)


def _check_range(name: str, value: object, allowed: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"{name} must be {'in ' if allowed[0] in '([' else ''}{allowed}, "
                         f"got {value!r}")


def _normalize_stop(stop: object) -> list[str]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, (list, tuple)):
        raise _wrong_type("stop", "a string or a list of strings", stop)
    for s in items:
        if not isinstance(s, str):
            raise _wrong_type("stop", "a list of strings", s)
        if not s:
            # An empty stop string would match before the first token and end every request.
            raise ValueError("stop strings must be non-empty, got ''")
    return list(dict.fromkeys(items))  # dedupe, keep the caller's order


def _normalize_logit_bias(bias: object) -> dict[int, float] | None:
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise _wrong_type("logit_bias", "an object mapping token ids to numbers", bias)
    out: dict[int, float] = {}
    for key, value in bias.items():
        # JSON object keys are strings: "50256" names token 50256
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        tid = _as_int("logit_bias key", key)
        if tid < 0:
            raise ValueError(f"logit_bias keys must be token ids >= 0, got {key!r}")
        v = _as_float(f"logit_bias[{tid}]", value)
        _check_range(f"logit_bias[{tid}]", v, f"[-{MAX_LOGIT_BIAS:g}, {MAX_LOGIT_BIAS:g}]",
                     -MAX_LOGIT_BIAS <= v <= MAX_LOGIT_BIAS)
        out[tid] = v
    return out or None


def _normalize_stop_token_ids(ids: object) -> list[int]:
    if ids is None:
        return []
    if not isinstance(ids, (list, tuple, set, frozenset)):
        raise _wrong_type("stop_token_ids", "a list of integers", ids)
    ordered = sorted(ids) if isinstance(ids, (set, frozenset)) else ids
    out = [_as_int("stop_token_ids", t) for t in ordered]
    bad = [t for t in out if t < 0]
    if bad:
        raise ValueError(f"stop_token_ids must be >= 0, got {bad[0]}")
    return list(dict.fromkeys(out))
