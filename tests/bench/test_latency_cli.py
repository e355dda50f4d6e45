"""`tessera bench latency` end to end on the CPU: tiny shapes, the JSON report, the HF comparison."""
from __future__ import annotations

import json

import pytest
import torch

from tessera import cli

FIGURES = ("prefill_ms", "prefill_tok_s", "decode_ms_per_step", "decode_tok_s", "e2e_ms")


def run_bench(tmp_path, *args: str) -> tuple[int, dict | None]:
    out = tmp_path / "latency.json"
    rc = cli.main(["bench", "latency", "--device", "cpu", "--warmup", "1", "--repeat", "2",
                   "--out", str(out), *args])
    return rc, json.loads(out.read_text()) if out.exists() else None


def check_figure(figure: dict) -> None:
    assert figure["min"] <= figure["median"] <= figure["max"]
    assert figure["min"] > 0


def test_latency_json_with_hf_comparison(tmp_path, capsys) -> None:
    rc, report = run_bench(tmp_path, "--model-path", "tiny-llama", "--batch-size", "1", "3",
                           "--input-len", "5", "--output-len", "4", "--compare", "hf")
    assert rc == 0
    assert report["benchmark"] == "latency" and report["model"] == "tiny-llama"
    assert report["device_name"] and report["torch_version"] == torch.__version__
    assert isinstance(report["git_commit"], str) and report["git_commit"]
    assert report["hf"]["transformers_version"] and report["hf"]["placement"] == "beside"
    assert report["config"]["engine"]["model_path"] == "tiny-llama"
    assert report["config"]["bench"]["batch_size"] == [1, 3]
    results = report["results"]
    assert [(r["batch_size"], r["input_len"], r["output_len"]) for r in results] == [
        (1, 5, 4), (3, 5, 4)]
    for r in results:
        for name in FIGURES:
            check_figure(r[name])
            check_figure(r["hf"][name])
        assert r["prefill_ms"]["n"] == 2 and r["decode_ms_per_step"]["n"] == 2 * 3  # O - 1 steps
        # tok/s follows from the times: B tokens per decode step, B * I per prefill
        assert r["decode_tok_s"]["median"] == pytest.approx(
            r["batch_size"] * 1e3 / r["decode_ms_per_step"]["median"])
        assert r["prefill_tok_s"]["median"] == pytest.approx(
            r["batch_size"] * r["input_len"] * 1e3 / r["prefill_ms"]["median"])
        assert r["speedup_vs_hf"]["decode"] == pytest.approx(
            r["hf"]["decode_ms_per_step"]["median"] / r["decode_ms_per_step"]["median"])
        assert r["decode_path"] == "eager"  # no graphs on the CPU
        # same weights in both: the first-token logits agree to float32 rounding
        assert r["hf_check"]["max_abs_logit_diff"] < 1e-4
        assert r["hf_check"]["first_token_agreement"] == 1.0
    table = capsys.readouterr().out
    assert "decode ms/step" in table and "HF decode" in table


@pytest.mark.parametrize("model", ["tiny-qwen3-moe", "tiny-deepseek-v2"])
def test_moe_hf_comparison_after_releasing_tessera(tmp_path, monkeypatch, model) -> None:
    """A model whose second copy does not fit (forced here) is compared sequentially: tessera's
    cases first, then its device memory released and HF built from a host copy of the weights;
    the stacked experts land in HF's stacked `experts.gate_up_proj` / `down_proj`, DeepSeek's
    shared experts under their checkpoint name, its absorbed MLA buffers left out."""
    from tessera.bench import hf_reference

    monkeypatch.setattr(hf_reference, "fits_beside", lambda runner: False)
    rc, report = run_bench(tmp_path, "--model-path", model, "--batch-size", "2",
                           "--input-len", "6", "--output-len", "3", "--compare", "hf")
    assert rc == 0 and report["hf"]["placement"] == "sequential"
    (r,) = report["results"]
    check_figure(r["hf"]["decode_ms_per_step"])
    assert r["hf_check"]["max_abs_logit_diff"] < 1e-4
    assert r["hf_check"]["first_token_agreement"] == 1.0


def test_hf_copy_of_a_tied_qk_norm_checkpoint(tmp_path) -> None:
    """A saved HF directory (Qwen3: q/k norms, tied embeddings) with weights large enough that a
    wrong copy would show in the logits; output length 1 = prefill only."""
    from hf_models import save_tiny_model

    path = save_tiny_model(str(tmp_path / "qwen3"), "qwen3", tied=True)
    rc, report = run_bench(tmp_path, "--model-path", path, "--batch-size", "2",
                           "--input-len", "7", "--output-len", "1", "--compare", "hf")
    assert rc == 0
    (r,) = report["results"]
    assert r["decode_ms_per_step"] is None and r["hf"]["decode_ms_per_step"] is None
    assert r["speedup_vs_hf"]["decode"] is None
    assert r["hf_check"]["max_abs_logit"] > 0.5
    assert r["hf_check"]["max_abs_logit_diff"] < 1e-4
    assert r["hf_check"]["first_token_agreement"] == 1.0


@pytest.mark.parametrize("args,message", [
    (["--input-len", "0"], ">= 1"),
    (["--batch-size", "4", "--kv-cache-tokens", "8"], "--kv-cache-tokens"),
    (["--batch-size", "4", "--max-running-requests", "2"], "--max-running-requests"),
    (["--input-len", "4000", "--output-len", "200"], "context length"),
])
def test_bad_flags_exit_2_with_a_message(tmp_path, capsys, args, message) -> None:
    rc, report = run_bench(tmp_path, "--model-path", "tiny-llama", *args)
    assert rc == 2 and report is None
    assert message in capsys.readouterr().err


def test_overlapped_decode_samples_what_step_by_step_decode_samples() -> None:
    """The bench's overlapped decode loop (the engine's default schedule) feeds each step the
    tokens the last one sampled, on the device: the same tokens as reading every step first."""
    from tessera.bench.latency import TesseraLatency
    from tessera.config import EngineConfig
    from tessera.runner.model_runner import ModelRunner

    config = EngineConfig.from_kwargs(model_path="tiny-llama", device="cpu",
                                      load_format="dummy", kv_cache_tokens=256,
                                      max_running_requests=3).resolve()
    bench = TesseraLatency(ModelRunner(config))
    prompts = [[5, 9, 3, 7], [11, 2, 8, 6], [4, 4, 4, 4]]
    runs = {}
    for overlap in (True, False):
        bench.overlap = overlap
        runs[overlap] = bench.run(prompts, 9)
    assert len(runs[True].decode_tokens) == 8 and len(runs[True].decode_ms) == 8
    assert runs[True].decode_tokens == runs[False].decode_tokens
