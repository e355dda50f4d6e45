"""Batched sampling on plain torch (any device): logits [B, V] -> one token per row.

One pass handles every request's own parameters: penalties -> logit bias -> min_new_tokens mask
-> grammar bitmask -> temperature -> softmax -> min-p -> top-k -> top-p -> draw. Greedy rows take the argmax of the penalized
logits. Python work is per batch (building `SamplingBatchInfo` from host lists); the hot path has
no per-request loop, no host<->device sync and no torch.Generator.

Randomness is counter-based: the uniform for (request seed, step, vocab index) is a SplitMix64
hash of those three integers, computed with int64 tensor ops. So a request's tokens depend only on
its seed, its step and its own logits, never on what else is in the batch, on the batch order, or
on how many draws other requests made; a retracted and recomputed request redraws the same tokens.
The draw is the exponential race `argmax(p_i / E_i)`, E_i ~ Exp(1) i.i.d., which picks i with
probability p_i / sum(p) (the Gumbel-max trick in probability space), so filtered probabilities
need no renormalization.

Filtering semantics follow vLLM: min-p keeps p >= min_p * max(p); top-k keeps the k most likely
(ties broken by lower id); top-p is applied to the distribution renormalized over what min-p and
top-k kept, keeping the smallest most-likely-first prefix whose mass reaches top_p.

Backends: `filter + draw from probs` is the one step a kernel library replaces
(`SAMPLING_BACKENDS`); penalties, masking and logprobs stay here.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence

import torch

from tessera.ops.argmax import argmax
from tessera.platforms.transfer import to_device_async
from tessera.sampling.logprobs import LOGPROBS_MODES, LogprobsMode, gather_logprobs
from tessera.sampling.params import SamplingParams
from tessera.sampling.penalties import PenaltyInfo, apply_penalties
from tessera.sampling.processors import LogitBias, apply_grammar_mask, apply_logit_bias

logger = logging.getLogger(__name__)

# ---- counter-based RNG --------------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def to_int64(value: int) -> int:
    """The signed int64 with the same low 64 bits as `value` (how torch stores a uint64)."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


_GAMMA = to_int64(0x9E3779B97F4A7C15)       # SplitMix64 increment: 2^64 / golden ratio, odd
_STEP_GAMMA = to_int64(0xD1B54A32D192ED03)  # a second odd constant, so steps and columns differ
_MIX1 = to_int64(0xBF58476D1CE4E5B9)
_MIX2 = to_int64(0x94D049BB133111EB)
_UNIFORM_BITS = 23  # float32 holds (m + 0.5) / 2^23 exactly, so U is never 0 or 1 -> E in (0, inf)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    # torch's >> on int64 is arithmetic (sign-extending); the hash needs a logical shift.
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix64_(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finalizer, in place on an int64 tensor (int64 multiply wraps mod 2^64)."""
    z ^= _shr(z, 30)
    z *= _MIX1
    z ^= _shr(z, 27)
    z *= _MIX2
    z ^= _shr(z, 31)
    return z


def random_bits(seeds: torch.Tensor, steps: torch.Tensor, num_cols: int) -> torch.Tensor:
    """[B, num_cols] int64 hash of (seed, step, column): column j of row b is the (j+1)-th output
    of a SplitMix64 stream keyed by (seeds[b], steps[b])."""
    key = _mix64_(_mix64_(seeds.clone()) + steps * _STEP_GAMMA)
    cols = torch.arange(1, num_cols + 1, dtype=torch.int64, device=seeds.device) * _GAMMA
    return _mix64_(key.view(-1, 1) + cols)


def exponential_noise(seeds: torch.Tensor, steps: torch.Tensor, num_cols: int) -> torch.Tensor:
    """[B, num_cols] float32 i.i.d. Exp(1) samples, a pure function of (seed, step, column)."""
    top = _shr(random_bits(seeds, steps, num_cols), 64 - _UNIFORM_BITS)
    uniform = (top.to(torch.float32) + 0.5) * (2.0 ** -_UNIFORM_BITS)
    return uniform.log_().neg_()


# ---- per-batch tensors --------------------------------------------------------------------------


@dataclasses.dataclass
class SamplingBatchInfo:
    """Everything the sampler needs for one batch, as device tensors plus host-side flags.

    The flags (`need_*`, `all_greedy`) are Python bools decided at build time, so the common case
    (no filtering, no penalties, no logprobs) skips that work without inspecting tensors.
    """

    vocab_size: int
    temperatures: torch.Tensor   # [B, 1] float32; 1.0 on greedy rows so dividing is harmless
    top_ks: torch.Tensor         # [B] int64; vocab_size where off
    top_ps: torch.Tensor         # [B] float32; 1.0 where off
    min_ps: torch.Tensor         # [B] float32; 0.0 where off
    seeds: torch.Tensor          # [B] int64
    steps: torch.Tensor          # [B] int64: index of the token being sampled in each output
    is_greedy: torch.Tensor | None  # [B] bool; only built when the batch mixes greedy and not
    penalties: PenaltyInfo | None
    min_tokens_rows: torch.Tensor | None  # [M] int64 } logits[rows[i], ids[i]] = -inf: EOS and
    min_tokens_ids: torch.Tensor | None   # [M] int64 } stop ids of rows below min_new_tokens
    all_greedy: bool
    need_top_k: bool
    need_top_p: bool
    need_min_p: bool
    need_logprobs: bool
    max_top_logprobs: int
    logit_bias: LogitBias | None = None
    # int32 [B, ceil(V / 32)] (xgrammar's layout), host or device; set by the caller after build
    # when some row follows a grammar (rows without one are all ones)
    token_bitmask: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.seeds.shape[0]

    @classmethod
    def build(cls, params: Sequence[SamplingParams], seeds: Sequence[int],
              step_ids: Sequence[int], output_ids: Sequence[Sequence[int]] | None,
              prompt_ids: Sequence[Sequence[int]] | None, vocab_size: int,
              device: torch.device | str, *, eos_token_ids: Iterable[int] = ()
              ) -> SamplingBatchInfo:
        """Per-row tensors for one batch.

        seeds: one per row, already resolved by the caller: `params.seed` when the user gave one,
            otherwise a seed drawn ONCE when the request was created (e.g. from an engine RNG) and
            reused every step; drawing a fresh one per step would make retraction non-replayable.
            Any Python int; only its low 64 bits matter.
        step_ids: per row, how many tokens that request has generated so far (the index of the
            token being sampled): the RNG counter, and the min_new_tokens test.
        output_ids / prompt_ids: token ids so far, read only when some row uses a penalty
            (prompt ids only for repetition_penalty); may be None otherwise.
        eos_token_ids: the model's EOS ids, masked with `stop_token_ids` below min_new_tokens.
        """
        batch = len(params)
        assert len(seeds) == batch and len(step_ids) == batch, "one seed and step per row"
        greedy = [p.is_greedy for p in params]
        sampled = [p for p, g in zip(params, greedy) if not g]
        floats = []  # temperature, top_p, min_p: one tensor, one host->device copy
        ints = []    # top_k, seed, step
        for p, g, seed, step in zip(params, greedy, seeds, step_ids):
            top_k = vocab_size if g or p.top_k < 0 else min(p.top_k, vocab_size)
            floats.append((1.0, 1.0, 0.0) if g else (p.temperature, p.top_p, p.min_p))
            ints.append((top_k, to_int64(seed), step))
        f = to_device_async(floats, torch.float32, device).view(batch, 3)
        i = to_device_async(ints, torch.int64, device).view(batch, 3)

        eos = set(eos_token_ids)
        rows: list[int] = []
        ids: list[int] = []
        for r, (p, step) in enumerate(zip(params, step_ids)):
            if step < p.min_new_tokens:
                banned = sorted(t for t in eos.union(p.stop_token_ids) if t < vocab_size)
                rows += [r] * len(banned)
                ids += banned
        mixed = any(greedy) and not all(greedy)
        with_logprobs = [p for p in params if p.logprobs]
        return cls(
            vocab_size=vocab_size, temperatures=f[:, 0:1], top_ps=f[:, 1], min_ps=f[:, 2],
            top_ks=i[:, 0], seeds=i[:, 1], steps=i[:, 2],
            is_greedy=to_device_async(greedy, torch.bool, device) if mixed else None,
            penalties=PenaltyInfo.build(params, output_ids, prompt_ids, vocab_size, device),
            min_tokens_rows=to_device_async(rows, torch.int64, device) if rows else None,
            min_tokens_ids=to_device_async(ids, torch.int64, device) if rows else None,
            all_greedy=all(greedy),
            need_top_k=any(0 < p.top_k < vocab_size for p in sampled),
            need_top_p=any(p.top_p < 1.0 for p in sampled),
            need_min_p=any(p.min_p > 0.0 for p in sampled),
            need_logprobs=bool(with_logprobs),
            max_top_logprobs=max((p.top_logprobs for p in with_logprobs), default=0),
            logit_bias=LogitBias.build(params, vocab_size, device))


@dataclasses.dataclass
class SampleOutput:
    token_ids: torch.Tensor                    # [B] int64
    logprobs: torch.Tensor | None = None       # [B] float32, when any row asked for logprobs
    # (values [B, n], ids [B, n]) most likely first, n = the batch's largest top_logprobs;
    # a row that asked for fewer uses its first top_logprobs columns
    top_logprobs: tuple[torch.Tensor, torch.Tensor] | None = None


# ---- the torch backend --------------------------------------------------------------------------


def filter_probs(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Zero the probabilities min-p, top-k and top-p drop (not renormalized: the race does not
    need it). Rows whose filter is off pass through bit-exactly, so batch-mates' parameters never
    change a row's result."""
    if info.need_min_p:
        threshold = probs.amax(dim=-1, keepdim=True) * info.min_ps.view(-1, 1)
        probs = probs.masked_fill(probs < threshold, 0.0)
    if not (info.need_top_k or info.need_top_p):
        return probs
    # stable: ties at the top-k boundary go to the lower id, identically in every batch
    sorted_probs, order = probs.sort(dim=-1, descending=True, stable=True)
    keep = torch.ones_like(sorted_probs, dtype=torch.bool)
    if info.need_top_k:
        rank = torch.arange(probs.shape[-1], device=probs.device)
        keep = rank.view(1, -1) < info.top_ks.view(-1, 1)
        sorted_probs = sorted_probs.masked_fill(~keep, 0.0)
    if info.need_top_p:
        cumulative = sorted_probs.cumsum(dim=-1)
        mass_before = cumulative - sorted_probs  # exactly 0 for the top token: it always stays
        top_p = info.top_ps.view(-1, 1)
        # compare against top_p * (kept mass) = renormalizing after top-k/min-p; top_p == 1 keeps
        # everything explicitly, since a float32 cumsum can reach the total before the tail
        keep &= (mass_before < top_p * cumulative[:, -1:]) | (top_p >= 1.0)
    mask = torch.empty_like(keep).scatter_(-1, order, keep)
    return probs.masked_fill(~mask, 0.0)


def torch_sample_from_probs(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """probs [B, V] (softmax of temperature-scaled logits) -> token ids [B] int64."""
    probs = filter_probs(probs, info)
    noise = exponential_noise(info.seeds, info.steps, probs.shape[-1])
    return (probs / noise).argmax(dim=-1)


SampleFromProbs = Callable[[torch.Tensor, SamplingBatchInfo], torch.Tensor]

# The single switch point for kernel libraries: a backend takes the temperature-scaled
# probabilities and the batch info and returns token ids.
def _ops_sampler(backend: str) -> SampleFromProbs:
    """A backend of the FlashInfer-compatible op library (tessera.sampling.ops): one fused,
    sorting-free call per step. Same filter order as the torch path (min-p and top-k, renormalize,
    top-p); ties at the top-k boundary are all kept (the torch path keeps the lower ids)."""

    def sample(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        from tessera.sampling import ops

        return ops.filtered_sampling_from_probs(
            probs,
            top_k=info.top_ks if info.need_top_k else None,
            top_p=info.top_ps if info.need_top_p else None,
            min_p=info.min_ps if info.need_min_p else None,
            seed=info.seeds, offset=info.steps,  # per-row RNG: independent of batch mates
            filter_apply_order="min_p_first", backend=backend).long()

    return sample


SAMPLING_BACKENDS: dict[str, SampleFromProbs] = {
    "torch": torch_sample_from_probs,
    "triton": _ops_sampler("triton"),
    "flashinfer": _ops_sampler("flashinfer"),
}


class Sampler:
    """Samples one token per row of a logits batch; stateless apart from its choices."""

    def __init__(self, backend: str = "torch", logprobs_mode: LogprobsMode = "raw") -> None:
        if backend == "auto":
            backend = "torch"
        if backend not in SAMPLING_BACKENDS:
            raise ValueError(f"unknown sampling backend {backend!r}; "
                             f"choose from {sorted(SAMPLING_BACKENDS)}")
        if backend != "torch":
            from tessera.sampling import ops

            if backend not in ops.available_backends():
                raise ValueError(f"sampling backend {backend!r} is not available here "
                                 f"(available: {ops.available_backends()})")
        if logprobs_mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode must be one of {LOGPROBS_MODES}, got "
                             f"{logprobs_mode!r}")
        self.backend = backend
        self.logprobs_mode = logprobs_mode
        self._sample_from_probs = SAMPLING_BACKENDS[backend]  # bound once, not looked up per step

    def sample(self, logits: torch.Tensor, info: SamplingBatchInfo,
               greedy_tokens: torch.Tensor | None = None) -> SampleOutput:
        """logits [B, V] (any float dtype; left unmodified) -> SampleOutput.

        greedy_tokens: logits.argmax(-1) when the forward already computed it (a decode graph
        does): an all-greedy batch without penalties or min_new_tokens masking then takes it
        as is instead of launching its own argmax."""
        assert logits.dim() == 2 and logits.shape[0] == info.batch_size, \
            f"logits {tuple(logits.shape)} for a batch of {info.batch_size}"
        assert logits.shape[1] == info.vocab_size, "info built for another vocab size"
        raw = logits.float()  # bf16 logits: penalties, softmax and logprobs in float32
        processed = raw
        if info.penalties is not None:
            processed = apply_penalties(processed, info.penalties)
        if info.min_tokens_rows is not None:
            assert info.min_tokens_ids is not None
            processed = processed.index_put((info.min_tokens_rows, info.min_tokens_ids),
                                            processed.new_full((1,), float("-inf")))
        if info.logit_bias is not None:
            processed = apply_logit_bias(processed, info.logit_bias)
        if info.token_bitmask is not None:
            processed = apply_grammar_mask(processed, info.token_bitmask)
        scaled = processed
        if info.all_greedy and greedy_tokens is not None and processed is raw:
            token_ids = greedy_tokens  # argmax of these very logits, done by the forward
        elif info.all_greedy:
            token_ids = argmax(processed)  # no softmax, no RNG
        else:
            scaled = processed / info.temperatures
            token_ids = self._sample_from_probs(torch.softmax(scaled, dim=-1), info)
            if info.is_greedy is not None:
                token_ids = torch.where(info.is_greedy, argmax(processed), token_ids)
        out = SampleOutput(token_ids=token_ids)
        if info.need_logprobs:
            source = raw if self.logprobs_mode == "raw" else scaled
            out.logprobs, out.top_logprobs = gather_logprobs(source, token_ids,
                                                             info.max_top_logprobs)
        return out
