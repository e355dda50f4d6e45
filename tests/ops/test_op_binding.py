"""The bind-once rule: which forward an op binds on each platform, and how to force native."""
from __future__ import annotations

import pytest
import torch

from tessera.layers import custom_op as ops_base
from tessera.layers.activation import SiluAndMul
from tessera.layers.layernorm import RMSNorm
from tessera.layers.rotary import RotaryEmbedding, get_rope
from tessera.ops import native_ops
from tessera.ops.library import has_fake_kernel, op_exists, register_fake_if_exists
from tessera.platforms import CpuPlatform, CudaPlatform, MusaPlatform


def _bind_on(monkeypatch, platform) -> None:
    monkeypatch.setattr(ops_base, "current_platform", lambda: platform)


def test_cpu_binds_native_path(monkeypatch):
    _bind_on(monkeypatch, CpuPlatform())
    assert RMSNorm(8).bound_forward == "forward_cpu"
    x = torch.randn(3, 8)
    assert torch.equal(RMSNorm(8)(x), RMSNorm(8).forward_native(x))


def test_cuda_binds_triton_path_unless_forced_native(monkeypatch):
    _bind_on(monkeypatch, CudaPlatform())
    assert SiluAndMul().bound_forward == "forward_cuda"
    assert SiluAndMul(force_native=True).bound_forward == "forward_native"
    assert RMSNorm(8, force_native=True).bound_forward == "forward_native"
    with native_ops():
        assert RotaryEmbedding(16, 32, 10000.0).bound_forward == "forward_native"
    assert RotaryEmbedding(16, 32, 10000.0).bound_forward == "forward_cuda"
    monkeypatch.setenv("TESSERA_NATIVE_OPS", "1")
    assert RMSNorm(8).bound_forward == "forward_native"


def test_binding_is_fixed_at_construction(monkeypatch):
    _bind_on(monkeypatch, CudaPlatform())
    op = SiluAndMul()
    _bind_on(monkeypatch, CpuPlatform())
    assert op.bound_forward == "forward_cuda"  # a later platform change does not rebind


def test_cuda_without_triton_falls_back_to_native(monkeypatch):
    _bind_on(monkeypatch, CudaPlatform())
    monkeypatch.setattr(ops_base, "triton_available", lambda: False)
    assert RMSNorm(8).bound_forward == "forward_native"


def test_musa_without_vendor_ops_binds_triton_then_native(monkeypatch):
    platform = MusaPlatform.__new__(MusaPlatform)  # no torch_musa here: skip the runtime probe
    _bind_on(monkeypatch, platform)
    # this process has no torch_musa, so aten::_fused_rmsnorm_forward etc. do not exist
    assert not op_exists("aten::_fused_rmsnorm_forward")
    assert RMSNorm(8).bound_forward == "forward_cuda"
    assert SiluAndMul().bound_forward == "forward_cuda"
    platform.supports_triton = False
    assert RMSNorm(8).bound_forward == "forward_native"


def test_get_rope_shares_modules_per_binding():
    a = get_rope(16, 64, 10000.0)
    assert get_rope(16, 64, 10000.0) is a
    with native_ops():
        native = get_rope(16, 64, 10000.0)
    assert native is not a and native.bound_forward == "forward_native"


# ---- register_fake_if_exists -------------------------------------------------------------------

_lib = torch.library.Library("tessera_test_fake", "DEF")
_lib.define("halve(Tensor x) -> Tensor")
_lib.define("with_meta(Tensor x) -> Tensor")
_lib.impl("with_meta", lambda x: x.clone(), "Meta")


def test_register_fake_if_exists_skips_absent_ops():
    calls = []

    @register_fake_if_exists("tessera_test_fake::does_not_exist")
    def fake(x):
        calls.append(x)
        return x

    assert not op_exists("tessera_test_fake::does_not_exist")
    assert fake(1) == 1 and calls == [1]  # the function itself is returned unchanged


def test_register_fake_if_exists_registers_for_present_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    assert not has_fake_kernel("tessera_test_fake::halve")

    @register_fake_if_exists("tessera_test_fake::halve")
    def fake(x):
        return x.new_empty(x.shape[0] // 2)

    assert has_fake_kernel("tessera_test_fake::halve")
    with FakeTensorMode():
        assert torch.ops.tessera_test_fake.halve(torch.empty(10)).shape == (5,)
    # a second registration (e.g. the vendor shipped its own fake) is a no-op, not an error
    register_fake_if_exists("tessera_test_fake::halve")(fake)


def test_register_fake_if_exists_leaves_meta_kernels_alone():
    assert has_fake_kernel("tessera_test_fake::with_meta")
    register_fake_if_exists("tessera_test_fake::with_meta")(lambda x: pytest.fail("not called"))
    with torch.device("meta"):
        assert torch.ops.tessera_test_fake.with_meta(torch.empty(3)).shape == (3,)
