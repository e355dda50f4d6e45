"""Sampling ops (tessera.sampling.ops): torch reference and Triton kernels.

Without CUDA the Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by
tests/conftest.py before the kernels are imported: Triton reads it when @triton.jit decorates). The
interpreter is slow, so its long-tail vocab is 4096 and its sample counts are smaller (noted per
test); the `gpu` tests repeat the checks at vocab 151936 with 50k samples and capture the sampler
in a CUDA graph.

Statistical tests compare sample counts with the exact filtered distribution by a chi-square test
(p > 1e-3). Seeds are fixed, so each test is deterministic; tokens outside the kept set must never
be drawn at all.
"""
from __future__ import annotations

import pytest
import torch
from scipy.stats import chisquare

from tessera.sampling import ops
from tessera.sampling.ops import torch_ref

HAS_CUDA = torch.cuda.is_available()
DEVICE = "cuda" if HAS_CUDA else "cpu"
HAS_TRITON = "triton" in ops.available_backends()
gpu = pytest.mark.gpu
BACKENDS = ["torch", pytest.param("triton", marks=pytest.mark.skipif(
    not HAS_TRITON, reason="triton is not installed"))]
# CPU sizes; interpreted Triton pays per row, so it gets a smaller vocab and fewer samples there.
# The gpu tests below rerun these checks at vocab 151936 with 50k samples for every backend.
SMALL_SAMPLES = {"torch": 50_000, "triton": 30_000}
TAIL_VOCAB = {"torch": 151_936, "triton": 4096}
TAIL_SAMPLES = {"torch": 50_000, "triton": 3_000}
GPU_BACKENDS = ["torch", "triton", pytest.param("flashinfer", marks=pytest.mark.skipif(
    "flashinfer" not in ops.available_backends(), reason="flashinfer is not installed"))]


def _probs(values: list[float], device: str = DEVICE) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device)[None]


def _long_tail(vocab: int, seed: int = 0, device: str = DEVICE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(torch.randn(1, vocab, generator=gen) * 2.5, -1).to(device)


def _draw(fn, probs: torch.Tensor, n: int, backend: str, **kw) -> torch.Tensor:
    """n samples from row 0 of probs in one call: indices repeat the row, rows use their own
    Philox streams (one shared seed)."""
    idx = torch.zeros(n, dtype=torch.int64, device=probs.device)
    out = fn(probs, indices=idx, backend=backend, seed=20240601, **kw)
    assert out.dtype == torch.int64 and out.shape == (n,)
    return out


def _assert_distribution(samples: torch.Tensor, expected: torch.Tensor) -> None:
    """Chi-square test of sample counts against `expected` (probabilities, zero = never drawn).
    Tokens are merged, most likely first, into bins expecting >= 5 samples."""
    vocab = expected.numel()
    counts = torch.bincount(samples.long().cpu(), minlength=vocab).double()
    expected = expected.double().cpu()
    expected = expected / expected.sum()  # on the CPU: a CUDA 0-dim divisor would not mix
    never = expected == 0
    assert counts[never].sum() == 0, f"drew filtered-out tokens {never.nonzero().flatten()[:10]}"
    n = counts.sum()
    order = torch.argsort(expected, descending=True)
    order = order[~never[order]]
    obs_bins, exp_bins, o, e = [], [], 0.0, 0.0
    for i in order.tolist():
        o, e = o + counts[i].item(), e + expected[i].item() * n
        if e >= 5:
            obs_bins.append(o)
            exp_bins.append(e)
            o = e = 0.0
    if e > 0:  # leftover tail joins the last bin
        if obs_bins:
            obs_bins[-1] += o
            exp_bins[-1] += e
        else:
            obs_bins, exp_bins = [o], [e]
    if len(obs_bins) < 2:
        return
    scale = sum(obs_bins) / sum(exp_bins)  # scipy insists the totals agree to 1.5e-8
    p = chisquare(obs_bins, [e * scale for e in exp_bins]).pvalue
    assert p > 1e-3, f"chi-square p={p:.2e} over {len(obs_bins)} bins"


def _kept(probs_row: torch.Tensor, kept: list[int]) -> torch.Tensor:
    expected = torch.zeros_like(probs_row, dtype=torch.float64)
    expected[kept] = probs_row[kept].double()
    return expected


# hand-made distributions (dyadic, so every sum is exact in float32)
TIES = [0.25, 0.125, 0.125, 0.125, 0.125, 0.0625, 0.0625, 0.0625, 0.0625, 0.0]
NUCLEUS = [0.5, 0.25, 0.125, 0.0625, 0.0625]
ORDERS = [0.3, 0.2, 0.2, 0.1, 0.1, 0.05, 0.05]
MIN_P_ORDERS = [0.4, 0.3, 0.2, 0.06, 0.04]  # min_p=0.2 cuts 0.06, 0.04: top_p=0.75 sees 0.9 left


def _dominant(vocab: int = 64) -> list[float]:
    rest = (1.0 - 0.5 - 0.03) / (vocab - 2)
    return [0.5, 0.03] + [rest] * (vocab - 2)


# ---- the filter rules, by hand -------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("top_k,kept", [(1, [0]), (3, [0, 1, 2, 3, 4]), (5, [0, 1, 2, 3, 4]),
                                        (6, list(range(9))), (0, list(range(9))),
                                        (10, list(range(9)))])
def test_top_k_keeps_ties_at_the_boundary(backend: str, top_k: int, kept: list[int]) -> None:
    out = ops.top_k_renorm_probs(_probs(TIES), top_k, backend=backend)[0].cpu()
    assert sorted(out.nonzero().flatten().tolist()) == kept
    expected = _kept(torch.tensor(TIES), kept)
    torch.testing.assert_close(out.double(), expected / expected.sum(), atol=1e-7, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("top_p,kept", [(0.75, [0, 1]), (0.7500001, [0, 1, 2]), (0.5, [0]),
                                        (0.5000001, [0, 1]), (1.0, [0, 1, 2, 3, 4]), (0.0, [0])])
def test_top_p_keeps_the_smallest_set_reaching_top_p(backend: str, top_p: float,
                                                     kept: list[int]) -> None:
    out = ops.top_p_renorm_probs(_probs(NUCLEUS), top_p, backend=backend)[0].cpu()
    assert out.nonzero().flatten().tolist() == kept
    assert out.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_top_k_mask_logits(backend: str) -> None:
    logits = torch.tensor([[1.0, 3.0, 2.0, 2.0, -torch.inf, 0.5],
                           [-1.0, -2.0, -3.0, -4.0, -5.0, -6.0]], device=DEVICE)
    out = ops.top_k_mask_logits(logits, torch.tensor([2, 0], device=DEVICE), backend=backend)
    ninf = -torch.inf
    expected = torch.tensor([[ninf, 3.0, 2.0, 2.0, ninf, ninf], logits[1].tolist()])
    assert torch.equal(out.cpu(), expected)
    half = ops.top_k_mask_logits(logits.half(), 3, backend=backend)
    assert half.dtype == torch.float16
    assert torch.isfinite(half).sum().item() == 6


# ---- statistical exactness -----------------------------------------------------------------------
STAT_CASES = {
    "top_k_ties": (TIES, ops.top_k_sampling_from_probs, {"top_k": 3}, [0, 1, 2, 3, 4]),
    "top_p_exact_boundary": (NUCLEUS, ops.top_p_sampling_from_probs, {"top_p": 0.75}, [0, 1]),
    "min_p_dominant": (_dominant(), ops.min_p_sampling_from_probs, {"min_p": 0.06}, [0, 1]),
    "top_k_first": (ORDERS, ops.top_k_top_p_sampling_from_probs,
                    {"top_k": 4, "top_p": 0.75}, [0, 1, 2]),
    "joint": (ORDERS, ops.top_k_top_p_sampling_from_probs,
              {"top_k": 4, "top_p": 0.75, "filter_apply_order": "joint"}, [0, 1, 2, 3, 4]),
    "plain": (ORDERS, ops.sampling_from_probs, {}, list(range(7))),
    "min_p_then_top_p": (MIN_P_ORDERS, ops.filtered_sampling_from_probs,
                         {"top_p": 0.75, "min_p": 0.2, "filter_apply_order": "min_p_first"},
                         [0, 1]),
    "top_p_then_min_p": (MIN_P_ORDERS, ops.filtered_sampling_from_probs,
                         {"top_p": 0.75, "min_p": 0.2}, [0, 1, 2]),
}


def _check_hand_made(backend: str, case: str, device: str, samples: int) -> None:
    values, fn, kw, kept = STAT_CASES[case]
    drawn = _draw(fn, _probs(values, device), samples, backend, **kw)
    _assert_distribution(drawn, _kept(torch.tensor(values), kept))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(STAT_CASES))
def test_hand_made_distributions(backend: str, case: str) -> None:
    _check_hand_made(backend, case, DEVICE, SMALL_SAMPLES[backend])


TAIL_CASES = {
    "plain": (ops.sampling_from_probs, {}),
    "top_k_first": (ops.top_k_top_p_sampling_from_probs, {"top_k": 50, "top_p": 0.9}),
    "joint": (ops.top_k_top_p_sampling_from_probs,
              {"top_k": 50, "top_p": 0.9, "filter_apply_order": "joint"}),
    "top_p": (ops.top_p_sampling_from_probs, {"top_p": 0.5}),
    "all_three": (ops.filtered_sampling_from_probs, {"top_k": 200, "top_p": 0.9, "min_p": 0.02}),
    "all_three_vllm_order": (ops.filtered_sampling_from_probs,
                             {"top_k": 200, "top_p": 0.9, "min_p": 0.02,
                              "filter_apply_order": "min_p_first"}),
}


def _reference_expected(probs: torch.Tensor, kw: dict) -> torch.Tensor:
    """The exact filtered distribution of row 0, from the sort-based reference."""
    x = probs.float()
    param = {name: torch.tensor([kw[name]], device=x.device) if name in kw else None
             for name in ("top_k", "top_p", "min_p")}
    bound = torch_ref.boundaries(x, param["top_k"], param["top_p"], param["min_p"],
                                 kw.get("filter_apply_order", "top_k_first"))
    return torch.where(torch_ref.keep_mask(x, bound), x, 0.0)[0]


def _check_long_tail(backend: str, case: str, device: str, vocab: int, samples: int) -> None:
    fn, kw = TAIL_CASES[case]
    probs = _long_tail(vocab, device=device)
    drawn = _draw(fn, probs, samples, backend, **kw)
    _assert_distribution(drawn, _reference_expected(probs, kw))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(TAIL_CASES))
def test_long_tail_vocab(backend: str, case: str) -> None:
    if backend == "triton" and case in ("top_p", "all_three_vllm_order") and not HAS_CUDA:
        pytest.skip("interpreted Triton is slow: covered by all_three here, the gpu tests run it")
    _check_long_tail(backend, case, DEVICE, TAIL_VOCAB[backend], TAIL_SAMPLES[backend])


def _check_no_fallback(device: str, vocab: int) -> None:
    """The kernel's argmax fallback after max_rounds would bias samples: it must not trigger."""
    from tessera.sampling.ops import triton_backend
    from tessera.sampling.ops.common import resolve_randomness

    gen = torch.Generator().manual_seed(3)
    sharpness = torch.linspace(0.5, 6, 8)[:, None]
    probs = torch.softmax(torch.randn(8, vocab, generator=gen) * sharpness, -1).to(device)
    rand = resolve_randomness(torch.arange(8, device=device), 0, None, probs.device, 8)
    passes = torch.zeros(8, dtype=torch.int32, device=device)
    for k, p, first in [(1, None, False), (50, 0.9, False), (50, 0.9, True), (None, 0.3, False)]:
        kt = None if k is None else torch.tensor([k], dtype=torch.int32, device=device)
        pt = None if p is None else torch.tensor([p], device=device)
        triton_backend.sample(probs, None, kt, pt, None, first, rand, passes_out=passes)
        assert (passes > 0).all(), (k, p, first, passes)  # negative: the row fell back


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_rejection_never_falls_back() -> None:
    _check_no_fallback(DEVICE, TAIL_VOCAB["triton"])


# ---- renorm against the reference ----------------------------------------------------------------
def _assert_top_p_renorm_close(got: torch.Tensor, want: torch.Tensor, probs: torch.Tensor,
                               top_p: torch.Tensor) -> None:
    """Like assert_close, but a token whose mass-above lies within float32 summation error of
    top_p * mass may go either way (the reference sums in float64, the kernel in float32)."""
    x = probs.double()
    s, order = x.sort(1, descending=True)
    first = torch.searchsorted(-s, -s, side="left")  # where each run of ties starts
    above = torch.empty_like(x).scatter_(1, order, (s.cumsum(1) - s).gather(1, first))
    budget = (top_p.double() * x.sum(1))[:, None]
    clear = (above - budget).abs() > 1e-5 * budget
    assert torch.equal((got > 0) & clear, (want > 0) & clear)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
@pytest.mark.parametrize("ties", [False, True])
def test_triton_renorm_equals_reference(ties: bool) -> None:
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3000, generator=gen) * 2
    if ties:  # coarse logits: many exactly equal probs, also at the boundaries
        logits = logits.round()
    probs = torch.softmax(logits, -1).to(DEVICE)
    top_k = torch.tensor([1, 7, 50, 0, 3000, 2999], device=DEVICE)
    top_p = torch.tensor([0.0, 0.3, 0.9, 1.0, 0.999, 0.5], device=DEVICE)
    want = ops.top_k_renorm_probs(probs, top_k, backend="torch")
    got = ops.top_k_renorm_probs(probs, top_k, backend="triton")
    assert torch.equal(got > 0, want > 0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    want = ops.top_p_renorm_probs(probs, top_p, backend="torch")
    got = ops.top_p_renorm_probs(probs, top_p, backend="triton")
    assert torch.equal(got > 0, want > 0)
    _assert_top_p_renorm_close(got, want, probs, top_p)
    logits = logits.to(DEVICE)
    assert torch.equal(ops.top_k_mask_logits(logits, top_k, backend="triton"),
                       ops.top_k_mask_logits(logits, top_k, backend="torch"))


# ---- seeds, batches, indices, NaN ----------------------------------------------------------------
def _batch(rows: int = 6, vocab: int = 500, device: str = DEVICE) -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    return torch.softmax(torch.randn(rows, vocab, generator=gen) * 2, -1).to(device)


@pytest.mark.parametrize("backend", BACKENDS)
def test_same_seed_same_samples(backend: str) -> None:
    probs = _batch()
    kw = {"top_k": 20, "top_p": 0.9, "backend": backend}
    a = ops.top_k_top_p_sampling_from_probs(probs, seed=7, **kw)
    assert torch.equal(a, ops.top_k_top_p_sampling_from_probs(probs, seed=7, **kw))
    assert a.dtype == torch.int32
    draws = {tuple(ops.top_k_top_p_sampling_from_probs(probs, seed=7, offset=o, **kw).tolist())
             for o in range(4)}
    assert len(draws) > 1, "offset must change the random numbers"
    gens = [torch.Generator(device=DEVICE).manual_seed(11) for _ in range(2)]
    g1, g2 = (ops.sampling_from_probs(probs, generator=g, backend=backend) for g in gens)
    assert torch.equal(g1, g2)


def _check_batch_independence(backend: str, order: str, device: str, vocab: int = 500) -> None:
    """With per-row seeds, row i's sample is the one it gets when sampled alone."""
    probs = _batch(vocab=vocab, device=device)
    top_k = torch.tensor([5, 0, 50, 1, 500, 20], device=device)
    top_p = torch.tensor([0.9, 0.5, 1.0, 0.9, 0.2, 0.95], device=device)
    min_p = torch.tensor([0.0, 0.1, 0.0, 0.0, 0.05, 0.01], device=device)
    seed = torch.tensor([3, 1, 4, 1, 5, 9], device=device)
    offset = torch.tensor([0, 2, 7, 1, 8, 2], device=device)
    for step in range(3):
        batched = ops.filtered_sampling_from_probs(
            probs, top_k, top_p, min_p, filter_apply_order=order, seed=seed, offset=offset + step,
            backend=backend)
        for i in range(probs.shape[0]):
            alone = ops.filtered_sampling_from_probs(
                probs[i:i + 1], top_k[i:i + 1], top_p[i:i + 1], min_p[i:i + 1],
                filter_apply_order=order, seed=seed[i:i + 1], offset=offset[i:i + 1] + step,
                backend=backend)
            assert alone.item() == batched[i].item(), (step, i)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("order", ["top_k_first", "joint", "min_p_first"])
def test_row_sample_does_not_depend_on_its_batch(backend: str, order: str) -> None:
    _check_batch_independence(backend, order, DEVICE)


@pytest.mark.parametrize("backend", BACKENDS)
def test_per_row_parameters_stay_inside_each_rows_kept_set(backend: str) -> None:
    probs = _batch(rows=4, vocab=300)
    top_k = [3, 0, 40, 10]
    top_p = [1.0, 0.4, 0.8, 0.6]
    reps = 200
    idx = torch.arange(4, device=DEVICE).repeat_interleave(reps)
    k = torch.tensor(top_k, device=DEVICE).repeat_interleave(reps)
    p = torch.tensor(top_p, device=DEVICE).repeat_interleave(reps)
    for order in ("top_k_first", "joint"):
        out = ops.top_k_top_p_sampling_from_probs(probs, k, p, indices=idx, seed=1,
                                                  filter_apply_order=order, backend=backend)
        bound = torch_ref.boundaries(probs.float(), torch.tensor(top_k, device=DEVICE),
                                     torch.tensor(top_p, device=DEVICE), None, order)
        keep = torch_ref.keep_mask(probs.float(), bound)
        assert keep[idx, out.long()].all()
        assert len(set(out[:reps].tolist())) > 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_indices_pick_rows_and_set_the_output_dtype(backend: str) -> None:
    one_hot = torch.eye(8, device=DEVICE)[[3, 5, 6]]
    for dtype in (torch.int32, torch.int64):
        idx = torch.tensor([2, 0, 0, 1, 2], dtype=dtype, device=DEVICE)
        out = ops.top_k_sampling_from_probs(one_hot, 2, indices=idx, backend=backend)
        assert out.dtype == dtype and out.tolist() == [6, 3, 3, 5, 6]


@pytest.mark.parametrize("backend", BACKENDS)
def test_check_nan_raises(backend: str) -> None:
    probs = _batch()
    probs[2, 7] = torch.nan
    with pytest.raises(ValueError, match="NaN"):
        ops.top_p_sampling_from_probs(probs, 0.9, check_nan=True, backend=backend)


def test_backend_registry() -> None:
    assert set(ops.SAMPLING_BACKENDS) == {"torch", "triton", "flashinfer"}
    assert "torch" in ops.available_backends()
    with pytest.raises(ValueError, match="unknown sampling backend"):
        ops.set_default_backend("nope")
    with pytest.raises(ValueError, match="filter_apply_order"):
        ops.top_k_top_p_sampling_from_probs(_batch(), 5, 0.9, filter_apply_order="top_p_first")
    previous = ops.get_default_backend()
    try:
        ops.set_default_backend("torch")
        assert ops.sampling_from_probs(_batch(), seed=1).shape == (6,)
    finally:
        ops.set_default_backend(previous)
    if "flashinfer" not in ops.available_backends():
        with pytest.raises(RuntimeError, match="flashinfer"):
            ops.sampling_from_probs(_batch(), backend="flashinfer")


# ---- GPU: real sizes, CUDA graphs, FlashInfer ----------------------------------------------------
@gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", list(STAT_CASES))
def test_gpu_hand_made_distributions(backend: str, case: str) -> None:
    if backend == "flashinfer" and case in ("top_k_ties", "top_k_first", "min_p_dominant"):
        # FlashInfer documents no rule for ties at the top-k boundary (its top-k renorm inside
        # top_k_first may break them) nor whether min_p's cut is inclusive: report, don't fail
        pytest.xfail("FlashInfer's boundary rule may differ; XPASS means it matches ours")
    _check_hand_made(backend, case, "cuda", 50_000)


@gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
@pytest.mark.parametrize("case", list(TAIL_CASES))
def test_gpu_long_tail_vocab(backend: str, case: str) -> None:
    _check_long_tail(backend, case, "cuda", 151_936, 50_000)


@gpu
@pytest.mark.parametrize("order", ["top_k_first", "joint", "min_p_first"])
def test_gpu_triton_row_sample_does_not_depend_on_its_batch(order: str) -> None:
    _check_batch_independence("triton", order, "cuda", vocab=151_936)


@gpu
def test_gpu_triton_rejection_never_falls_back() -> None:
    _check_no_fallback("cuda", 151_936)


@gpu
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_gpu_renorm_real_size(backend: str) -> None:
    if backend == "torch":
        pytest.skip("the reference itself")
    gen = torch.Generator().manual_seed(7)
    probs = torch.softmax(torch.randn(64, 151_936, generator=gen) * 3, -1).cuda()
    top_k = torch.randint(0, 2000, (64,), generator=gen).cuda()
    top_p = torch.rand(64, generator=gen).cuda()
    want = ops.top_k_renorm_probs(probs, top_k, backend="torch")
    got = ops.top_k_renorm_probs(probs, top_k, backend=backend)
    assert torch.equal(got > 0, want > 0)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    want = ops.top_p_renorm_probs(probs, top_p, backend="torch")
    got = ops.top_p_renorm_probs(probs, top_p, backend=backend)
    _assert_top_p_renorm_close(got, want, probs, top_p)


@gpu
def test_gpu_triton_sampler_in_cuda_graph() -> None:
    probs = torch.softmax(torch.randn(32, 151_936, device="cuda") * 2.5, -1)
    seed = torch.tensor([1], device="cuda")
    offset = torch.zeros(32, dtype=torch.int64, device="cuda")

    def run() -> torch.Tensor:
        return ops.top_k_top_p_sampling_from_probs(probs, 50, 0.9, seed=seed, offset=offset,
                                                   backend="triton")

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        run()  # compile and warm up outside the capture
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = run()
    keep = torch_ref.keep_mask(probs, torch_ref.boundaries(
        probs, torch.tensor([50], device="cuda"), torch.tensor([0.9], device="cuda"), None,
        "top_k_first"))
    replays = []
    for value in (1, 2):
        seed.fill_(value)
        graph.replay()
        replays.append(out.clone())
        assert keep[torch.arange(32, device="cuda"), replays[-1].long()].all()
        assert torch.equal(replays[-1], run()), "a replay must equal the eager call"
    assert not torch.equal(replays[0], replays[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_per_row_parameters(backend: str) -> None:
    """Per-row parameters may be strided views (columns of one packed tensor, as the engine's
    Sampler builds them); each row must read its own value."""
    gen = torch.Generator().manual_seed(5)
    probs = torch.softmax(torch.randn(6, 64, generator=gen) * 2, -1).to(DEVICE)
    packed = torch.stack([torch.tensor([1, 2, 3, 64, 5, 1]), torch.arange(6) + 11,
                          torch.zeros(6, dtype=torch.int64)], dim=1).to(DEVICE)  # [6, 3]
    top_k, seed, offset = packed[:, 0], packed[:, 1], packed[:, 2]
    assert not top_k.is_contiguous()
    got = ops.top_k_sampling_from_probs(probs, top_k, seed=seed, offset=offset, backend=backend)
    want = ops.top_k_sampling_from_probs(probs, top_k.contiguous(), seed=seed.contiguous(),
                                         offset=offset.contiguous(), backend=backend)
    assert torch.equal(got, want)
    # top_k = 1 rows must give their argmax: fails if a row reads a neighbour's top_k
    for row in (0, 5):
        assert got[row].item() == probs[row].argmax().item()
