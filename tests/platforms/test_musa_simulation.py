"""MUSA by simulation: no MUSA hardware was available, so a `musa` device is simulated on CPU in a
subprocess (musa_sim.py; renaming PrivateUse1 is process-global and irreversible).

Three processes: torch_musa with its fused ops; without them (older release); and without the
torch.device replacement that MUSA's CUDA-compatibility layer installs. Together they show
detection picks MusaPlatform, ops bind forward_musa (or fall back to Triton), every fast path
traces under FakeTensorMode through fake kernels, and FX code with a musa device constant fails
without tessera's FX patch exactly when torch.device is replaced, and runs with it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("musa_sim.py")
VARIANTS = {
    "vendor": ["--vendor-ops"],
    "no_vendor": [],
    "vendor_keep_device": ["--vendor-ops", "--keep-torch-device"],
}


@pytest.fixture(scope="module")
def sim() -> dict[str, dict]:
    env = {k: v for k, v in os.environ.items() if k not in ("TESSERA_PLATFORM", "TRITON_INTERPRET")}
    env["CUDA_VISIBLE_DEVICES"] = ""  # detection must find MUSA even on a CUDA machine
    procs = {name: subprocess.Popen([sys.executable, str(SCRIPT), *flags], env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, flags in VARIANTS.items()}
    results = {}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        lines = [line for line in stdout.splitlines() if line.startswith("RESULTS ")]
        assert proc.returncode == 0 and lines, f"{name}:\n{stdout[-3000:]}\n{stderr[-3000:]}"
        results[name] = json.loads(lines[-1][len("RESULTS "):])
        if "unsupported" in results[name]:
            pytest.skip(results[name]["unsupported"])
    return results


def test_detection_picks_musa_and_answers(sim):
    for result in sim.values():
        assert result["platform"] == "MusaPlatform"
    answers = sim["vendor"]["answers"]
    assert answers == {
        "device_type": "musa", "dist_backend": "mccl", "attention": "triton", "sampling": "triton",
        "full_graph": True, "piecewise_graph": True, "graph_class_is_musa": True,
        "mem_get_info": [48 << 30, 80 << 30], "device": "musa:0",
        "device_name": "MTT S5000 (simulated)", "event_timing": True,
        "patches": ["patch_fx_device_constants"],
    }


def test_ops_bind_vendor_kernels_when_torch_musa_has_them(sim):
    assert sim["vendor"]["bound"] == {"RMSNorm": "forward_musa", "SiluAndMul": "forward_musa",
                                      "RotaryEmbedding": "forward_musa"}
    # the vendor ops came without fake kernels; register_fake_if_exists supplied them
    assert all(sim["vendor"]["vendor_fakes"].values())


def test_ops_fall_back_to_triton_without_vendor_kernels(sim):
    assert set(sim["no_vendor"]["bound"].values()) == {"forward_cuda"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_decoder_layer_traces_on_fake_musa_tensors(sim, variant):
    result = sim[variant]
    assert result["fake_forward"] == {"out": ["musa:0", [12, 64], "torch.bfloat16"],
                                      "residual": ["musa:0", [12, 64]]}
    assert result["trace"]["musa_device_constant"]


def test_traced_graph_holds_each_fast_op_as_one_node(sim):
    assert sim["vendor"]["trace"]["targets"] == [
        "aten._fused_rmsnorm_forward.default", "aten._fused_swiglu_forward.default",
        "aten.rope.default", "tessera.attention.default"]
    assert sim["no_vendor"]["trace"]["targets"] == [
        "tessera.attention.default", "tessera.fused_add_rms_norm.default",
        "tessera.rms_norm.default", "tessera.rotary_embedding.default",
        "tessera.silu_and_mul.default"]


def test_fx_device_constant_needs_the_patch(sim):
    for variant in ("vendor", "no_vendor"):
        assert sim[variant]["fx_run_unpatched"] == \
            "ERROR NameError: name 'device' is not defined"
        assert sim[variant]["fx_run_patched"] == "ok [12, 64]"
    # with torch.device untouched, a renamed PrivateUse1 device alone prints and runs fine
    assert sim["vendor_keep_device"]["fx_run_unpatched"] == "ok [12, 64]"
    assert sim["vendor_keep_device"]["fx_run_patched"] == "ok [12, 64]"


@pytest.mark.parametrize("variant", ["vendor", "no_vendor"])
def test_fp8_and_moe_ops_compile_through_their_fake_kernels(sim, variant):
    """Group quant, block GEMM, FP8 and plain fused MoE under torch.compile(fullgraph=True) on
    fake musa tensors: one graph (no break), each op one node, shapes from the fake kernels.
    torch_musa ships no vendor kernels for these, so MUSA binds their Triton paths (compiled by
    torch_musa's Triton backend) with or without its other fused ops."""
    result = sim[variant]["fp8_compile"]
    assert result["bound"] == {"PerTokenGroupQuantFP8": "forward_cuda",
                               "BlockFP8Linear": "forward_cuda",
                               "Fp8MoEExperts": "forward_cuda", "MoEExperts": "forward_cuda"}
    assert result["graphs"] == 1
    assert result["targets"] == ["tessera.fused_moe", "tessera.fused_moe_fp8",
                                 "tessera.per_token_group_quant_fp8",
                                 "tessera.w8a8_block_fp8_matmul"]
    assert result["x_q"] == ["musa:0", [12, 256], "torch.float8_e4m3fn"]
    assert result["x_s"] == [[12, 2], "torch.float32"]
    assert result["out"] == ["musa:0", [12, 384], "torch.bfloat16"]
