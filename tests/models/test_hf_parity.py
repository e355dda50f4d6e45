"""tessera logits equal HF transformers' on the same random weights (CPU, float32)."""
from __future__ import annotations

import pytest
import torch
from hf_models import load_hf, save_tiny_model
from runner_driver import RunnerDriver

from tessera.config import EngineConfig
from tessera.forward.batch import ForwardMode
from tessera.runner.model_runner import ModelRunner

CASES = [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True), ("qwen3", False),
         ("qwen3", True)]


def make_runner(path: str, device: str = "cpu", dtype: str = "float32", **kw) -> ModelRunner:
    cfg = EngineConfig.from_kwargs(model_path=path, device=device, dtype=dtype,
                                   kv_cache_tokens=8192, max_running_requests=16,
                                   attention_backend=kw.pop("attention_backend", "torch_native"),
                                   disable_cuda_graph=True, disable_piecewise_cuda_graph=True,
                                   **kw)
    return ModelRunner(cfg)


def hf_logits(hf, ids: list[int], device: str) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids], device=device)).logits[0].float()


def check_greedy_generation(path: str, max_new_tokens: int = 12) -> None:
    """Greedy generation through the engine (CPU, float32) equals HF's generate, two prompts
    batched together."""
    from tessera import LLM, SamplingParams

    hf = load_hf(path)
    prompts = [[5, 17, 42, 9], [100, 3, 250, 77, 8, 61, 33]]
    params = SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens, ignore_eos=True)
    with LLM(model=path, device="cpu", dtype="float32", attention_backend="torch_native",
             disable_cuda_graph=True, disable_piecewise_cuda_graph=True,
             kv_cache_tokens=1024) as llm:
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    for prompt, out in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=max_new_tokens,
                              do_sample=False, min_new_tokens=max_new_tokens)
        assert out.token_ids == ref[0, len(prompt):].tolist()


def check_parity(path: str, device: str, dtype: torch.dtype, atol: float, **runner_kw) -> None:
    hf = load_hf(path, dtype, device)
    runner = make_runner(path, device, str(dtype).replace("torch.", ""), **runner_kw)
    drv = RunnerDriver(runner)
    g = torch.Generator().manual_seed(0)
    lengths = [1, 5, 17, 64, 130]
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in lengths]

    # 1. full prefill of a batch of different lengths: every position's logits
    rows = [drv.new_request() for _ in prompts]
    _, all_logits = drv.step(list(zip(rows, prompts)))
    start = 0
    for p in prompts:
        ref = hf_logits(hf, p, device)
        got = all_logits[start:start + len(p)]
        torch.testing.assert_close(got, ref, atol=atol, rtol=0)
        start += len(p)

    # 1b. the same prompts as new requests asking only for next-token logits: the last layer's
    # MLP and the final norm run on each request's last token only (LlamaModel.finish)
    rows_b = [drv.new_request() for _ in prompts]
    last_logits, none = drv.step(list(zip(rows_b, prompts)), all_logits=False)
    assert none is None and last_logits.shape[0] == len(prompts)
    ref = torch.stack([hf_logits(hf, p, device)[-1] for p in prompts])
    torch.testing.assert_close(last_logits, ref, atol=atol, rtol=0)

    # 2. extend on top of a cached prefix (new requests: prefix first, then the rest)
    rows2 = [drv.new_request() for _ in prompts]
    split = [max(1, n // 2) for n in lengths]
    drv.step([(r, p[:s]) for r, p, s in zip(rows2, prompts, split)])
    tails = [(r, p[s:]) for r, p, s in zip(rows2, prompts, split) if len(p) > s]
    _, ext_logits = drv.step(tails)
    start = 0
    for (_, tail), p, s in zip(tails, [p for p, s in zip(prompts, split) if len(p) > s],
                               [s for p, s in zip(prompts, split) if len(p) > s]):
        ref = hf_logits(hf, p, device)[s:]
        torch.testing.assert_close(ext_logits[start:start + len(tail)], ref, atol=atol, rtol=0)
        start += len(tail)

    # 3. eight greedy decode steps for the whole first batch at once
    seqs = [list(p) for p in prompts]
    next_logits = torch.stack([hf_logits(hf, s, device)[-1] for s in seqs])
    for _ in range(8):
        toks = next_logits.argmax(-1).tolist()
        for s, t in zip(seqs, toks):
            s.append(t)
        next_logits, _ = drv.step([(r, [t]) for r, t in zip(rows, toks)], ForwardMode.DECODE,
                                  all_logits=False)
        ref = torch.stack([hf_logits(hf, s, device)[-1] for s in seqs])
        torch.testing.assert_close(next_logits, ref, atol=atol, rtol=0)

    # 4. the longest request alone for four more steps: a one-row batch, which on CUDA runs the
    # one-row GEMV path with the norms and SiLU·mul folded into it (tessera.ops.linear)
    row, seq = rows[-1], seqs[-1]
    logits = next_logits[-1:]
    for _ in range(4):
        seq.append(int(logits.argmax(-1)))
        logits, _ = drv.step([(row, [seq[-1]])], ForwardMode.DECODE, all_logits=False)
        torch.testing.assert_close(logits[0], hf_logits(hf, seq, device)[-1], atol=atol, rtol=0)


@pytest.mark.parametrize("kind,tied", CASES)
def test_logits_match_hf_cpu_fp32(tmp_path, kind, tied):
    path = save_tiny_model(str(tmp_path / f"{kind}-{tied}"), kind, tied)
    check_parity(path, "cpu", torch.float32, atol=1e-4)


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_logits_match_hf_cpu_fp32_triton_attention(tmp_path, kind):
    """The triton backend in Triton's interpreter: extend kernel, and decode with the rotary
    embedding inside the attention kernel (Attention.forward_rope)."""
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("interpreter test; test_logits_match_hf_gpu_bf16 covers the compiled kernels")
    from tessera.ops.triton.interpreter import patch_for_numpy_2_4

    patch_for_numpy_2_4()  # Triton 3.6's interpreter vs numpy >= 2.4
    path = save_tiny_model(str(tmp_path / kind), kind, False)
    check_parity(path, "cpu", torch.float32, atol=1e-4, attention_backend="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch_native", "triton"])
@pytest.mark.parametrize("kind,tied", CASES)
def test_logits_match_hf_gpu_bf16(tmp_path, kind, tied, backend):
    path = save_tiny_model(str(tmp_path / f"{kind}-{tied}"), kind, tied, dtype=torch.bfloat16)
    check_parity(path, "cuda", torch.bfloat16, atol=6e-2, attention_backend=backend)
