"""A simulated MUSA device on CPU, run as a script in its own process (see test_musa_simulation).

What torch_musa does at import is reproduced with stock PyTorch:
  * `torch.utils.rename_privateuse1_backend("musa")` - the device string "musa" (process-global and
    irreversible, hence a separate process) - plus the Python device guard and hooks a C++ backend
    would register (torch's experimental `_setup_privateuseone_for_python_backend`), without which
    even slicing a fake musa tensor fails;
  * a stub `torch.musa` module (is_available, MUSAGraph, streams, memory info, ...) and
    `torch.version.musa`;
  * with --vendor-ops: torch_musa's fused ops (`aten::_fused_rmsnorm_forward`,
    `aten::_fused_swiglu_forward`, `aten::rope`) declared without any kernel or fake kernel;
  * `torch.device` replaced by a cuda->musa translating factory, as the MUSA CUDA-compatibility
    layer (torchada) does on real MUSA deployments.
No tensor ever holds MUSA memory: everything runs under FakeTensorMode. The script prints one line
`RESULTS {json}` with the outcome of each check; the pytest side asserts on them.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import traceback
import types
from pathlib import Path

import torch

# Dynamo and FX load before torch.device is replaced, in the order torchada imports them
import torch._dynamo
import torch.fx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))      # repo root
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ops"))  # ops_layer_helpers


def install_fake_musa(vendor_ops: bool) -> types.ModuleType:
    musa = types.ModuleType("torch.musa")

    class MUSAGraph:
        pass

    class Stream:
        pass

    class Event:
        def __init__(self, enable_timing: bool = False) -> None:
            self.enable_timing = enable_timing

    musa.is_available = lambda: True
    musa.is_initialized = lambda: True
    musa._is_in_bad_fork = lambda: False
    musa.device_count = lambda: 1
    musa.current_device = lambda: 0
    musa.set_device = lambda index: None
    musa.synchronize = lambda: None
    musa.get_device_name = lambda index=0: "MTT S5000 (simulated)"
    musa.mem_get_info = lambda: (48 << 30, 80 << 30)
    musa.memory_allocated = lambda: 0
    musa.empty_cache = lambda: None
    musa.manual_seed_all = lambda seed: None
    musa.MUSAGraph = MUSAGraph
    musa.graph_pool_handle = lambda: ("pool", 0)
    musa.graph = lambda graph, pool=None, stream=None: contextlib.nullcontext()
    musa.is_current_stream_capturing = lambda: False
    musa.Stream, musa.Event = Stream, Event
    musa.current_stream = lambda: "stream0"
    musa.stream = lambda stream: contextlib.nullcontext()
    from torch.utils.backend_registration import _setup_privateuseone_for_python_backend

    _setup_privateuseone_for_python_backend(rename="musa", backend_module=musa)
    torch.version.musa = "4.3.0-simulated"
    if vendor_ops:
        lib = torch.library.Library("aten", "FRAGMENT")
        lib.define("_fused_rmsnorm_forward(Tensor input, int[] normalized_shape, float eps, "
                   "Tensor? weight=None) -> (Tensor, Tensor)")
        lib.define("_fused_swiglu_forward(Tensor input) -> Tensor")
        lib.define("rope(Tensor input, Tensor freqs_cis, bool rotary_interleaved=False, "
                   "bool batch_first=False) -> Tensor")
        musa._vendor_lib = lib  # keep the definitions alive
    return musa


def replace_torch_device() -> None:
    original = torch.device

    class _Meta(type):
        def __instancecheck__(cls, instance):
            return isinstance(instance, original)

    class DeviceFactory(metaclass=_Meta):
        def __new__(cls, device=None, index=None, *, type=None):
            device = type if type is not None else device
            if isinstance(device, str) and device.startswith("cuda"):
                device = device.replace("cuda", "musa")
            return original(device) if index is None else original(device, index)

    torch.device = DeviceFactory


def compile_fp8_ops(mode) -> dict[str, object]:
    """torch.compile(fullgraph=True) of the block-FP8 ops (group quant + block GEMM, FP8 fused
    MoE) and the plain fused MoE on fake musa tensors: which forward each op bound, the graphs
    Dynamo produced (one means no graph break), the ops in them, and the output metadata, all
    from the fake kernels (no kernel can run here)."""
    from tessera.layers.quantization.fp8_quant import (
        BlockFP8Linear,
        Fp8MoEExperts,
        PerTokenGroupQuantFP8,
    )
    from tessera.layers.quantization.moe_methods import MoEExperts

    quant, linear = PerTokenGroupQuantFP8(128), BlockFP8Linear((128, 128))
    fp8_experts, experts = Fp8MoEExperts((128, 128)), MoEExperts()
    with mode:
        x = torch.randn(12, 256, dtype=torch.bfloat16, device="musa")
        w = torch.empty(384, 256, dtype=torch.float8_e4m3fn, device="musa")
        w_s = torch.empty(3, 2, dtype=torch.float32, device="musa")
        w13 = torch.empty(4, 512, 384, dtype=torch.float8_e4m3fn, device="musa")
        w2 = torch.empty(4, 384, 256, dtype=torch.float8_e4m3fn, device="musa")
        w13_s = torch.empty(4, 4, 3, dtype=torch.float32, device="musa")
        w2_s = torch.empty(4, 3, 2, dtype=torch.float32, device="musa")
        w13_bf16 = torch.empty(4, 512, 384, dtype=torch.bfloat16, device="musa")
        w2_bf16 = torch.empty(4, 384, 256, dtype=torch.bfloat16, device="musa")
        topk_w = torch.rand(12, 2, device="musa")
        topk_ids = torch.randint(0, 4, (12, 2), device="musa")

    def block(x):
        x_q, x_s = quant(x)
        h = linear(x, w, w_s)  # [12, 384]: group quant + block GEMM inside the op module
        h = fp8_experts(h, w13, w2, w13_s, w2_s, topk_w, topk_ids)
        return x_q, x_s, experts(h, w13_bf16, w2_bf16, topk_w, topk_ids)

    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    compiled = torch.compile(block, backend=backend, fullgraph=True, dynamic=True)
    with mode:
        x_q, x_s, out = compiled(x)
    targets = sorted({str(n.target) for gm in graphs for n in gm.graph.nodes
                      if n.op == "call_function" and "tessera" in str(n.target)})
    return {"bound": {type(op).__name__: op.bound_forward
                      for op in (quant, linear, fp8_experts, experts)},
            "graphs": len(graphs), "targets": targets,
            "x_q": [str(x_q.device), list(x_q.shape), str(x_q.dtype)],
            "x_s": [list(x_s.shape), str(x_s.dtype)],
            "out": [str(out.device), list(out.shape), str(out.dtype)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vendor-ops", action="store_true")
    parser.add_argument("--keep-torch-device", action="store_true",
                        help="leave torch.device alone (torch_musa without a CUDA-compat layer)")
    args = parser.parse_args()
    results: dict[str, object] = {}

    def check(name, fn):
        try:
            results[name] = fn()
        except Exception as exc:  # noqa: BLE001  (reported: every check gets a verdict)
            results[name] = f"ERROR {type(exc).__name__}: {exc}"
            traceback.print_exc()

    from torch.utils import backend_registration

    if not hasattr(backend_registration, "_setup_privateuseone_for_python_backend"):
        print("RESULTS " + json.dumps({"unsupported": f"torch {torch.__version__} has no Python "
                                                      "PrivateUse1 backend registration"}))
        return
    musa = install_fake_musa(args.vendor_ops)
    if not args.keep_torch_device:
        replace_torch_device()

    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx

    from tessera.layers.activation import SiluAndMul
    from tessera.layers.layernorm import RMSNorm
    from tessera.layers.rotary import RotaryEmbedding
    from tessera.ops.library import has_fake_kernel
    from tessera.platforms import current_platform

    platform = current_platform()
    check("platform", lambda: type(platform).__name__)
    check("answers", lambda: {
        "device_type": platform.device_type, "dist_backend": platform.dist_backend,
        "attention": platform.default_attention_backend,
        "sampling": platform.default_sampling_backend,
        "full_graph": platform.supports_full_graph,
        "piecewise_graph": platform.supports_piecewise_graph,
        "graph_class_is_musa": platform.graph_class() is musa.MUSAGraph,
        "mem_get_info": list(platform.mem_get_info()),
        "device": str(platform.device(0)), "device_name": platform.device_name(),
        "event_timing": platform.event(enable_timing=True).enable_timing,
        "patches": [p.__name__ for p in platform.compile_patches()],
    })
    check("bound", lambda: {type(op).__name__: op.bound_forward for op in
                            (RMSNorm(16), SiluAndMul(), RotaryEmbedding(16, 64, 10000.0))})
    check("vendor_fakes", lambda: {name: has_fake_kernel(name) for name in (
        "aten::_fused_rmsnorm_forward", "aten::_fused_swiglu_forward", "aten::rope")}
        if args.vendor_ops else {})

    from ops_layer_helpers import attention_context, default_dtype, llama_config

    from tessera.models.llama import LlamaDecoderLayer

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    config = llama_config()
    # built on CPU (ops bind by platform, not by tensor device); its tensors are then swapped for
    # fake musa tensors of the same metadata (values never matter under FakeTensorMode)
    with default_dtype(torch.bfloat16):  # as the model loader builds a bf16 model
        layer = LlamaDecoderLayer(config, 0, torch.bfloat16, qk_norm=True)
    with mode:
        for module in layer.modules():
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is not None:
                        fake = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype,
                                                   device="musa")
                        is_param = isinstance(t, torch.nn.Parameter)
                        table[name] = torch.nn.Parameter(fake, False) if is_param else fake
        positions = torch.arange(12, device="musa")
        hidden = torch.randn(12, config.hidden_size, dtype=torch.bfloat16, device="musa")
        residual = torch.randn_like(hidden)

    def run_layer(positions, hidden, residual):
        with attention_context():
            return layer(positions, hidden, residual)

    def fake_forward():
        with mode:
            out, res = run_layer(positions, hidden, residual)
        return {"out": [str(out.device), list(out.shape), str(out.dtype)],
                "residual": [str(res.device), list(res.shape)]}

    check("fake_forward", fake_forward)

    traced = {}

    def trace():
        with mode:
            traced["gm"] = make_fx(run_layer)(positions, hidden, residual)
        code = traced["gm"].code
        targets = sorted({str(n.target) for n in traced["gm"].graph.nodes
                          if "tessera." in str(n.target) or "fused" in str(n.target)
                          or "rope" in str(n.target)})
        return {"musa_device_constant": "device(type='musa', index=0)" in code,
                "targets": targets}

    check("trace", trace)

    def run_traced():
        gm = traced["gm"]
        gm.recompile()  # regenerate the code with whatever FX codegen is installed now
        with mode:
            out, _ = gm(positions, hidden, residual)
        return f"ok {list(out.shape)}"

    check("fx_run_unpatched", run_traced)
    platform.apply_compile_patches()
    check("fx_run_patched", run_traced)
    check("fp8_compile", lambda: compile_fp8_ops(mode))
    print("RESULTS " + json.dumps(results))


if __name__ == "__main__":
    main()
