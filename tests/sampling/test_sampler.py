from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from scipy import stats

from tessera import SamplingParams as SP
from tessera.sampling.penalties import PenaltyInfo, apply_penalties
from tessera.sampling.sampler import (
    Sampler,
    SamplingBatchInfo,
    exponential_noise,
    random_bits,
    to_int64,
)

V = 32
N = 20_000


def fixed_logits(vocab: int = V, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(vocab, generator=g) * 1.5


def build(params, seeds=None, steps=None, output_ids=None, prompt_ids=None, vocab=V, eos=(),
          device="cpu"):
    b = len(params)
    return SamplingBatchInfo.build(
        params, list(range(b)) if seeds is None else seeds,
        [0] * b if steps is None else steps, output_ids, prompt_ids, vocab, device,
        eos_token_ids=eos)


def reference_distribution(logits: torch.Tensor, p: SP) -> np.ndarray:
    """The filtered distribution by the book: float64, one request, no tensors tricks."""
    x = logits.double().numpy() / p.temperature
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    threshold = p.min_p * probs.max()
    assert p.min_p == 0 or np.abs(probs - threshold).min() > 1e-6, "min_p boundary too close"
    keep = probs >= threshold
    order = np.argsort(-probs, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    if p.top_k > 0:
        keep &= rank < p.top_k
    if p.top_p < 1:
        q = np.where(keep, probs, 0.0)[order]
        q /= q.sum()
        before = np.cumsum(q) - q
        assert np.abs(before - p.top_p).min() > 1e-4, "top_p boundary too close"
        keep[order[before >= p.top_p]] = False
    out = np.where(keep, probs, 0.0)
    return out / out.sum()


def assert_matches(samples: torch.Tensor, expected: np.ndarray) -> None:
    counts = np.bincount(samples.numpy(), minlength=len(expected)).astype(np.float64)
    assert counts[expected == 0].sum() == 0, "sampled a token the filters removed"
    exp = expected[expected > 0] * counts.sum()
    obs = counts[expected > 0]
    # fold bins too small for the chi-square approximation into one
    small = exp < 5
    if small.any():
        exp = np.append(exp[~small], exp[small].sum())
        obs = np.append(obs[~small], obs[small].sum())
    result = stats.chisquare(obs, exp)
    assert result.pvalue > 1e-3, (result, obs, exp)


CASES = {
    "temperature": SP(temperature=0.7),
    "top_k": SP(top_k=5),
    "top_p": SP(top_p=0.8),
    "min_p": SP(min_p=0.1),
    "combined": SP(temperature=1.3, top_k=12, top_p=0.7, min_p=0.02),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("vary", ["seed", "step"])
def test_empirical_distribution_matches_filtered(case, vary):
    params = CASES[case]
    logits = fixed_logits()
    if vary == "seed":  # N requests with distinct seeds, one step each
        info = build([params] * N, seeds=list(range(N)))
    else:  # one request, N consecutive steps
        info = build([params] * N, seeds=[1234] * N, steps=list(range(N)))
    tokens = Sampler().sample(logits.expand(N, V), info).token_ids
    assert_matches(tokens, reference_distribution(logits, params))


def test_greedy_is_argmax_and_needs_no_rng():
    logits = torch.randn(6, V)
    params = [SP(temperature=0), SP(temperature=0.0, top_p=0.3), SP(top_k=1, temperature=2.0)] * 2
    info = build(params)
    assert info.all_greedy
    out = Sampler().sample(logits, info)
    assert torch.equal(out.token_ids, logits.argmax(-1))
    # greedy rows inside a sampled batch still take the argmax
    mixed = params[:3] + [SP(temperature=1.0)] * 3
    out = Sampler().sample(logits, build(mixed)).token_ids
    assert torch.equal(out[:3], logits[:3].argmax(-1))


def test_greedy_takes_the_forwards_argmax_only_when_nothing_changes_the_logits():
    """A decode graph hands its in-graph argmax (greedy_tokens): used for all-greedy batches on
    the raw logits, ignored when penalties or min_new_tokens change them, or when any row
    samples."""
    logits = torch.randn(3, V)
    marker = torch.full((3,), -1)  # no token id: shows which path ran
    plain = build([SP(temperature=0)] * 3)
    assert Sampler().sample(logits, plain, greedy_tokens=marker).token_ids is marker
    penalised = build([SP(temperature=0, frequency_penalty=1.0)] * 3, output_ids=[[1], [2], []],
                      prompt_ids=[[0]] * 3)
    masked = build([SP(temperature=0, min_new_tokens=2)] * 3, eos=(5,))
    sampled = build([SP(temperature=0)] * 2 + [SP(temperature=1.0)])
    for info in (penalised, masked, sampled):
        out = Sampler().sample(logits, info, greedy_tokens=marker).token_ids
        assert not torch.equal(out, marker)


def test_same_seed_same_tokens_regardless_of_batch():
    torch.manual_seed(0)
    rows = 64
    logits = torch.randn(rows, V) * 2
    target = SP(temperature=0.9, top_k=20, top_p=0.9)
    seeds = [1000 + r for r in range(rows)]
    steps = [r % 7 for r in range(rows)]
    alone = Sampler().sample(logits, build([target] * rows, seeds, steps)).token_ids
    single = Sampler().sample(logits[5:6], build([target], seeds[5:6], steps[5:6])).token_ids
    assert single.item() == alone[5].item()

    # the same rows scattered among others with other parameters, and the batch reversed
    others = [SP(temperature=0), SP(top_p=0.5, min_p=0.2), SP(repetition_penalty=1.5),
              SP(frequency_penalty=1.0, logprobs=True, top_logprobs=4), SP(top_k=3),
              SP(min_new_tokens=5)]
    params, batch_seeds, batch_steps, batch_logits, where = [], [], [], [], []
    for r in range(rows):
        o = others[r % len(others)]
        params += [o, target]
        batch_seeds += [r, seeds[r]]
        batch_steps += [3, steps[r]]
        batch_logits += [torch.randn(V), logits[r]]
        where.append(2 * r + 1)
    order = list(reversed(range(len(params))))
    info = build([params[i] for i in order], [batch_seeds[i] for i in order],
                 [batch_steps[i] for i in order], output_ids=[[1, 2, 2]] * len(params),
                 prompt_ids=[[3, 4]] * len(params), eos=[0])
    mixed = Sampler().sample(torch.stack([batch_logits[i] for i in order]), info).token_ids
    position = {i: k for k, i in enumerate(order)}
    assert torch.equal(mixed[[position[w] for w in where]], alone)
    # and a different seed or step draws differently (not a constant stream)
    moved = Sampler().sample(logits, build([target] * rows, seeds, [s + 1 for s in steps]))
    assert not torch.equal(moved.token_ids, alone)


def test_rng_is_splitmix64_reference():
    """The hash is a fixed function of integers: pins the stream across devices and releases."""
    mask = (1 << 64) - 1

    def mix(z):
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return z ^ (z >> 31)

    def reference(seed, step, col):
        key = mix((mix(seed & mask) + step * 0xD1B54A32D192ED03) & mask)
        return to_int64(mix((key + (col + 1) * 0x9E3779B97F4A7C15) & mask))

    seeds = [0, 1, -1, 2**63 - 1, 123456789]
    bits = random_bits(torch.tensor([to_int64(s) for s in seeds]), torch.tensor([0, 5, 7, 1, 99]),
                       4)
    expected = [[reference(s, t, c) for c in range(4)]
                for s, t in zip(seeds, [0, 5, 7, 1, 99])]
    assert bits.tolist() == expected
    noise = exponential_noise(torch.tensor([7]), torch.tensor([0]), 200_000)
    assert noise.min() > 0 and torch.isfinite(noise).all()
    assert abs(noise.mean().item() - 1.0) < 0.01 and abs(noise.var().item() - 1.0) < 0.02


def reference_penalties(logits, prompt, output, p: SP) -> torch.Tensor:
    out = logits.clone()
    for t in set(prompt) | set(output):
        out[t] = out[t] / p.repetition_penalty if out[t] > 0 else out[t] * p.repetition_penalty
    for t, c in collections.Counter(output).items():
        out[t] -= p.frequency_penalty * c + p.presence_penalty
    return out


def test_penalties_match_per_request_reference():
    g = torch.Generator().manual_seed(1)
    rows = 12
    logits = torch.randn(rows, V, generator=g) * 3
    params, prompts, outputs = [], [], []
    for r in range(rows):
        params.append(SP(repetition_penalty=[1.0, 1.3, 0.7][r % 3],
                         frequency_penalty=[0.0, 0.5, -1.0, 2.0][r % 4],
                         presence_penalty=[0.0, 1.5, -0.5][r % 3]))
        prompts.append(torch.randint(0, V, (r + 1,), generator=g).tolist())
        outputs.append(torch.randint(0, V, (2 * r % 7,), generator=g).tolist())
    info = PenaltyInfo.build(params, outputs, prompts, V, "cpu")
    got = apply_penalties(logits, info)
    for r in range(rows):
        ref = reference_penalties(logits[r], prompts[r], outputs[r], params[r])
        torch.testing.assert_close(got[r], ref)
    # through the sampler: greedy picks the argmax of the penalized logits
    greedy = [SP(temperature=0, repetition_penalty=p.repetition_penalty,
                 frequency_penalty=p.frequency_penalty, presence_penalty=p.presence_penalty)
              for p in params]
    tokens = Sampler().sample(logits, build(greedy, output_ids=outputs, prompt_ids=prompts))
    assert torch.equal(tokens.token_ids, got.argmax(-1))


def test_no_penalties_builds_nothing():
    assert PenaltyInfo.build([SP(), SP(temperature=0)], None, None, V, "cpu") is None
    info = build([SP(frequency_penalty=0.5)], output_ids=[[1]], prompt_ids=None)
    assert info.penalties.seen is None and info.penalties.repetition is None


def test_min_new_tokens_masks_eos_and_stop_ids():
    logits = torch.zeros(4, V)
    logits[:, 0] = 50.0   # EOS dominates
    logits[:, 7] = 40.0   # then a stop token id
    params = [SP(temperature=0, min_new_tokens=3, stop_token_ids=[7]),
              SP(temperature=0, min_new_tokens=3, stop_token_ids=[7]),
              SP(temperature=0, min_new_tokens=3), SP(min_new_tokens=2, stop_token_ids=[7])]
    steps = [0, 3, 2, 1]
    tokens = Sampler().sample(logits, build(params, steps=steps, eos=[0])).token_ids
    assert tokens[0] not in (0, 7)   # below min: both masked
    assert tokens[1] == 0            # reached: EOS allowed again
    assert tokens[2] == 7            # only EOS masked for a row without stop ids
    # a sampled row below min_new_tokens never draws EOS or its stop id
    rows = 2000
    info = build([params[3]] * rows, steps=[1] * rows, eos=[0])
    drawn = Sampler().sample(logits[3].expand(rows, V), info).token_ids
    assert not ((drawn == 0) | (drawn == 7)).any()


def test_logprobs_raw_and_processed():
    torch.manual_seed(3)
    logits = torch.randn(4, V).to(torch.bfloat16)
    before = logits.clone()
    params = [SP(temperature=0.5, top_k=4, logprobs=True, top_logprobs=3),
              SP(temperature=0, repetition_penalty=1.5, logprobs=True, top_logprobs=5),
              SP(),  # did not ask: its columns are still filled, the caller ignores them
              SP(temperature=1.7, frequency_penalty=1.0, logprobs=True)]
    outputs, prompts = [[1, 1, 2]] * 4, [[3]] * 4
    info = build(params, output_ids=outputs, prompt_ids=prompts)
    out = Sampler().sample(logits, info)
    assert torch.equal(logits, before), "the caller's logits buffer must not be modified"
    raw = torch.log_softmax(logits.float(), -1)
    torch.testing.assert_close(out.logprobs, raw.gather(-1, out.token_ids[:, None]).squeeze(-1))
    values, ids = out.top_logprobs
    assert values.shape == ids.shape == (4, 5)
    torch.testing.assert_close(values, raw.topk(5, -1).values)
    assert torch.equal(ids, raw.topk(5, -1).indices)

    processed = Sampler(logprobs_mode="processed").sample(logits, info)
    assert torch.equal(processed.token_ids, out.token_ids)
    temps = torch.tensor([0.5, 1.0, 1.0, 1.7])[:, None]
    penalized = apply_penalties(logits.float(), info.penalties) / temps
    expected = torch.log_softmax(penalized, -1).gather(-1, out.token_ids[:, None]).squeeze(-1)
    torch.testing.assert_close(processed.logprobs, expected)

    plain = Sampler().sample(logits[:2], build([SP(), SP(temperature=0)]))
    assert plain.logprobs is None and plain.top_logprobs is None
    only_chosen = Sampler().sample(logits, build([SP(logprobs=True)] * 4))
    assert only_chosen.logprobs is not None and only_chosen.top_logprobs is None


def test_top_k_at_least_vocab_is_off():
    logits = torch.randn(3, V)
    info = build([SP(top_k=10 * V), SP(top_k=V), SP()])
    assert not info.need_top_k  # nothing to cut
    assert Sampler().sample(logits, info).token_ids.shape == (3,)


def test_backend_choice():
    assert Sampler("auto").backend == "torch"
    assert Sampler("triton").backend == "triton"  # triton is installed (runs on GPU tensors)
    with pytest.raises(ValueError, match="unknown sampling backend 'cuda'"):
        Sampler("cuda")
    with pytest.raises(ValueError, match="logprobs_mode"):
        Sampler(logprobs_mode="logits")


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES)
def test_triton_backend_distribution_on_gpu(case):
    """The Sampler's triton backend (the sampling op library) samples the same filtered
    distribution as the reference, with per-row seeds."""
    params = CASES[case]
    logits = fixed_logits()
    info = build([params] * N, seeds=list(range(N)), device="cuda")
    tokens = Sampler("triton").sample(logits.cuda().expand(N, V), info).token_ids
    assert_matches(tokens.cpu(), reference_distribution(logits, params))
