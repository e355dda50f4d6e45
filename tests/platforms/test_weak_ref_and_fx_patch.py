"""compilation helpers the platforms rely on: weak tensor references and the FX device patch."""
from __future__ import annotations

import pytest
import torch
import torch.fx
from torch.multiprocessing.reductions import StorageWeakRef

from tessera.compilation.weak_ref import weak_ref_tensor, weak_ref_tensors
from tessera.platforms.fx_patches import fx_device_constants_patched, patch_fx_device_constants

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float8_e4m3fn, torch.int64])
def test_weak_ref_aliases_the_same_memory(device, dtype):
    base = torch.arange(24, dtype=torch.float32, device=device).to(dtype).reshape(4, 6)
    view = base[1:, 2:5]  # offset and non-trivial strides must carry over
    weak = weak_ref_tensor(view)
    assert weak.dtype == view.dtype and weak.shape == view.shape
    assert weak.stride() == view.stride() and weak.storage_offset() == view.storage_offset()
    assert weak.data_ptr() == view.data_ptr()
    assert torch.equal(weak.float(), view.float())
    if dtype != torch.float8_e4m3fn:  # no arithmetic kernels for fp8
        base.add_(1)
        assert torch.equal(weak, view)  # writes through the owner are visible
        weak.zero_()
        assert (view == 0).all()  # and the other way round


@pytest.mark.parametrize("device", DEVICES)
def test_weak_ref_does_not_keep_memory_alive(device):
    owner = torch.empty(1 << 16, device=device)
    ref = StorageWeakRef(owner.untyped_storage())
    weak = weak_ref_tensor(owner)
    del owner
    assert ref.expired()  # only the weak tensor is left, and it does not own the storage
    del weak  # never read after its memory is gone: the caller guarantees lifetimes


def test_weak_ref_tensors_keeps_structure():
    a, b = torch.ones(3), torch.zeros(2, 2)
    out = weak_ref_tensors((a, [b, None], 5))
    assert isinstance(out, tuple) and isinstance(out[1], list)
    assert out[0].data_ptr() == a.data_ptr() and out[1][0].data_ptr() == b.data_ptr()
    assert out[1][1] is None and out[2] == 5
    assert weak_ref_tensors(a).data_ptr() == a.data_ptr()


def test_weak_ref_passes_fake_tensors_through():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        fake = torch.empty(4)
    assert weak_ref_tensor(fake) is fake


def _graph_with_device_constant() -> torch.fx.GraphModule:
    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    moved = graph.call_method("to", (x,), {"device": torch._C.device("cpu")})
    graph.output(moved)
    return torch.fx.GraphModule(torch.nn.Module(), graph)


def test_fx_patch_binds_device_when_torch_device_is_replaced(monkeypatch):
    """torch.device swapped for a factory (as MUSA's CUDA-compat layer does) breaks FX code with a
    device constant; the patch makes it run and leaves the generated text unchanged.
    (The unpatched failure is shown in a clean process by test_musa_simulation.)"""
    expected_code = _graph_with_device_constant().code
    patch_fx_device_constants()
    patch_fx_device_constants()  # idempotent
    assert fx_device_constants_patched()
    original = torch.device

    def factory(*args, **kwargs):
        return original(*args, **kwargs)

    monkeypatch.setattr(torch, "device", factory)
    gm = _graph_with_device_constant()
    assert gm.code == expected_code and "device(type='cpu')" in gm.code
    x = torch.randn(3)
    assert torch.equal(gm(x), x)
