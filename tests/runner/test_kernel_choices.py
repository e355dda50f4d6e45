"""Process-wide kernel choices made from the engine config: the one-row linear backend
(`--linear-backend`: the Triton GEMV or F.linear) and PDL (on unless `--disable-pdl`)."""
from __future__ import annotations

import logging

import pytest

from tessera.config import EngineConfig
from tessera.ops.linear import one_row_backend, set_one_row_backend
from tessera.ops.triton import pdl


def config(**kw) -> EngineConfig:
    return EngineConfig.from_kwargs(model_path="tiny-llama", device="cpu", load_format="dummy",
                                    kv_cache_tokens=256, max_running_requests=2, **kw)


@pytest.fixture(autouse=True)
def restore_choices():
    before = one_row_backend(), pdl.enabled()
    yield
    set_one_row_backend(before[0])
    pdl.set_enabled(before[1])


def test_auto_is_torch_on_cpu_and_logged(caplog):
    with caplog.at_level(logging.INFO, logger="tessera.config.engine"):
        resolved = config().resolve()
    assert resolved.backend.linear_backend == "torch"
    assert "few-row linear: torch" in caplog.text
    assert "PDL off (no CUDA Triton kernels on cpu)" in caplog.text


def test_triton_gemv_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="--linear-backend triton needs a CUDA device"):
        config(linear_backend="triton").resolve()


def test_cli_flags_reach_the_config():
    import argparse

    parser = argparse.ArgumentParser()
    EngineConfig.add_cli_args(parser)
    args = parser.parse_args(["--linear-backend", "torch", "--disable-pdl"])
    cfg = EngineConfig.from_cli(args)
    assert cfg.backend.linear_backend == "torch" and cfg.backend.disable_pdl
    assert not EngineConfig.from_cli(parser.parse_args([])).backend.disable_pdl
    with pytest.raises(SystemExit):
        parser.parse_args(["--linear-backend", "cublas"])


def test_model_runner_applies_the_choices():
    from tessera.runner.model_runner import ModelRunner

    set_one_row_backend("triton")
    ModelRunner(config())
    assert one_row_backend() == "torch"  # resolved for the CPU
    assert pdl.enabled()  # the default
    import torch

    assert not pdl.use_pdl(torch.device("cpu"))  # requested, but never off CUDA
    ModelRunner(config(disable_pdl=True))
    assert not pdl.enabled()
