"""Platform answers and detection on this (CPU) machine; the MUSA path is in test_musa_simulation."""
from __future__ import annotations

import pytest
import torch

from tessera.platforms import (
    CpuPlatform,
    CudaPlatform,
    MusaPlatform,
    PlatformKind,
    detect_platform,
    platform_for_device,
)


def test_cpu_platform_answers():
    cpu = CpuPlatform()
    assert cpu.kind is PlatformKind.CPU and cpu.device_type == "cpu"
    assert cpu.device(3) == torch.device("cpu")
    assert cpu.dist_backend == "gloo"
    assert cpu.default_attention_backend == "torch_native"
    assert not cpu.supports_full_graph and not cpu.supports_piecewise_graph
    assert cpu.compile_patches() == []
    free, total = cpu.mem_get_info()
    assert 0 < free <= total
    assert cpu.event() is None and not cpu.is_stream_capturing()
    with pytest.raises(RuntimeError, match="no graphs"):
        cpu.graph_class()


def test_forced_platform(monkeypatch):
    monkeypatch.setenv("TESSERA_PLATFORM", "cpu")
    assert isinstance(detect_platform(), CpuPlatform)
    monkeypatch.setenv("TESSERA_PLATFORM", "tpu")
    with pytest.raises(ValueError, match="choose one of"):
        detect_platform()


def test_detection_without_accelerators(monkeypatch):
    monkeypatch.delenv("TESSERA_PLATFORM", raising=False)
    expected = CudaPlatform if CudaPlatform.is_available() else CpuPlatform
    assert isinstance(detect_platform(), expected)


def test_musa_absent_without_torch_musa():
    assert not MusaPlatform.is_available()
    musa = MusaPlatform()
    assert musa.device_type == "musa" and musa.dist_backend == "mccl"
    assert musa.default_attention_backend == "triton" and musa.default_sampling_backend == "triton"
    assert not musa.supports_full_graph  # no torch.musa.MUSAGraph here
    assert [p.__name__ for p in musa.compile_patches()] == ["patch_fx_device_constants"]
    with pytest.raises(RuntimeError, match="torch_musa"):
        musa.mem_get_info()


def test_platform_for_device():
    assert isinstance(platform_for_device("musa:1"), MusaPlatform)
    assert isinstance(platform_for_device("cpu"), CpuPlatform)
    with pytest.raises(ValueError, match="unknown device"):
        platform_for_device("xla:0")


@pytest.mark.gpu
def test_cuda_platform_answers():
    cuda = CudaPlatform()
    assert cuda.device_count() >= 1
    free, total = cuda.mem_get_info()
    assert 0 < free <= total
    assert cuda.graph_class() is torch.cuda.CUDAGraph
    start, end = cuda.event(enable_timing=True), cuda.event(enable_timing=True)
    stream = cuda.new_stream()
    with cuda.stream_context(stream):
        start.record()
        torch.ones(1024, device="cuda").sum()
        end.record()
    cuda.synchronize()
    assert start.elapsed_time(end) >= 0
    graph = cuda.graph_class()()
    x = torch.zeros(4, device="cuda")
    with cuda.graph_context(graph, pool=cuda.graph_pool_handle()):
        assert cuda.is_stream_capturing()
        x.add_(1)
    graph.replay()
    cuda.synchronize()
    assert x.tolist() == [1.0] * 4


def test_hopper_or_newer_is_false_off_nvidia_gpus():
    """The one gate of the Hopper-only kernel paths (PDL, the stream GEMM, the extend kernel's
    TMA path): never on the CPU or another device type; on a CUDA GPU its compute capability."""
    from tessera.platforms.cuda import hopper_or_newer

    assert not hopper_or_newer(torch.device("cpu"))
    assert not hopper_or_newer(torch.device("meta"))
    if torch.cuda.is_available() and torch.version.cuda is not None:
        major = torch.cuda.get_device_capability()[0]
        assert hopper_or_newer(torch.device("cuda")) == (major >= 9)
