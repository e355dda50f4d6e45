"""Temp: the extend kernel's TMA path vs its pointer path: kernel time in graphs, then the real forward (interleaved A/B)."""
import functools, importlib, json, os, sys
from unittest import mock
import torch
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/prefill_opt"); sys.path.insert(0, "benchmarks/decode_opt")
from profile_decode import graph_of, time_ms
ea = importlib.import_module("tessera.attention.triton_ops.extend_attention")
from tessera.ops.triton import pdl
def time_us(fn, calls=20):
    def many():
        for _ in range(calls): fn()
    return round(time_ms(graph_of(many), 3, 7)["median"] * 1e3 / calls, 2)
res = {"device": torch.cuda.get_device_name(), "kernel": [], "ab": []}
pdl.set_enabled(True)
for model, hq, hk, d in (("qwen3-0.6b", 16, 8, 128), ("llama3-8b", 32, 8, 128)):
    for n in (64, 128, 256, 512, 1024, 2048):
        kc = torch.zeros(n + 1, hk, d, dtype=torch.bfloat16, device="cuda"); vc = torch.zeros_like(kc)
        table = torch.arange(1, n + 1, dtype=torch.int32, device="cuda").view(1, n)
        qkv = torch.randn(n, (hq + 2 * hk) * d, dtype=torch.bfloat16, device="cuda")
        q = qkv[:, :hq * d].view(n, hq, d); k = qkv[:, hq * d:(hq + hk) * d].view(n, hk, d); v = qkv[:, (hq + hk) * d:].view(n, hk, d)
        meta = [torch.tensor(x, dtype=dt, device="cuda") for x, dt in (([0], torch.int64), ([0], torch.int32), ([n], torch.int32), ([0], torch.int32))]
        loc = torch.arange(1, n + 1, dtype=torch.int64, device="cuda")
        row = {"model": model, "tokens": n, "us": {}}
        outs = {}
        for label, kw in (("pointer_auto", {"tma": False}), ("tma_forced", {"tma": True, "block_m": 64})):
            out = torch.empty(n, hq, d, dtype=torch.bfloat16, device="cuda")
            launch = ea.ExtendAttention(q, kc, vc, out, table, d ** -0.5, k_new=k, v_new=v, **kw)
            row["us"][label] = time_us(functools.partial(launch, *meta, n, loc))
            launch(*meta, n, loc); outs[label] = out.clone()
        row["max_diff"] = float((outs["pointer_auto"].float() - outs["tma_forced"].float()).abs().max())
        auto = ea.ExtendAttention(q, kc, vc, torch.empty(n, hq, d, dtype=torch.bfloat16, device="cuda"), table, d ** -0.5, k_new=k, v_new=v)
        row["auto_uses_tma"] = auto.tile(n)[1]
        print(json.dumps(row), flush=True); res["kernel"].append(row)
pdl.set_enabled(False)
from ab_prefill import interleaved
from tessera.compilation.bench_pcg import build_runner, free_memory
for model, sizes in (("llama3-8b", (1024, 256)), ("qwen3-0.6b", (256,))):
    with torch.inference_mode():
        runner, _ = build_runner(model, 1024, True, "eager", "cuda")
        def setter(value):
            def setup():
                ea.TMA_MIN_TOKENS = value
            return setup
        variants = [({"extend_tma": True}, runner, setter(256)), ({"extend_tma": False}, runner, setter(10 ** 9))]
        rows = [r for n in sizes for r in interleaved(model, n, variants, 3, 10)]
    platform = variants[0][1].platform
    ea.TMA_MIN_TOKENS = 256
    del variants, runner; free_memory(platform)
    res["ab"].append({"model": model, "variants": rows})
os.makedirs("/tmp/o", exist_ok=True); json.dump(res, open("/tmp/o/extend_tma.json", "w"), indent=1)
