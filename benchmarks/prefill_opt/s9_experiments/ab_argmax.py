"""Temp: decode bs=1 (decode graphs, overlap schedule) and the prefill step, with the Triton argmax vs torch.argmax, interleaved."""
import json, os, statistics, sys
from unittest import mock
import torch
sys.path.insert(0, os.getcwd())
from tessera.config import EngineConfig
from tessera.runner.model_runner import ModelRunner
from tessera.bench.latency import TesseraLatency
import tessera.ops.argmax as am
res = {"device": torch.cuda.get_device_name(), "rows": []}
import time
from tessera.ops.triton.argmax import argmax as targmax
x = torch.randn(1, 128256, device="cuda")
for name, fn in (("torch", lambda: torch.argmax(x, -1)), ("triton", lambda: targmax(x))):
    for _ in range(20): fn()
    torch.cuda.synchronize(); t0 = time.perf_counter()
    for _ in range(500): fn()
    host = (time.perf_counter() - t0) / 500 * 1e6; torch.cuda.synchronize()
    res[f"host_us_per_call_{name}"] = round(host, 2); print(name, "host us/call", round(host, 2), flush=True)
for model in ("llama3-8b", "qwen3-0.6b"):
    benches = {}
    for triton_argmax in (True, False):
        cfg = EngineConfig.from_kwargs(model_path=model, device="cuda", dtype="bfloat16", load_format="dummy",
                                       kv_cache_tokens=8192, max_running_requests=4, piecewise_cuda_graph_max_tokens=256)
        with mock.patch.object(am, "use_triton_argmax", am.use_triton_argmax if triton_argmax else (lambda x: False)):
            runner = ModelRunner(cfg)
            benches[triton_argmax] = (TesseraLatency(runner), triton_argmax)
    # the sampler's argmax (prefill step) is chosen at run time: patch it per variant while timing
    samples = {k: {"decode": [], "prefill16": []} for k in benches}
    g = torch.Generator().manual_seed(0)
    for rnd in range(6):
        for key in (list(benches) if rnd % 2 == 0 else list(benches)[::-1]):
            bench, flag = benches[key]
            with torch.inference_mode(), mock.patch.object(am, "use_triton_argmax", am.use_triton_argmax if flag else (lambda x: False)):
                for _ in range(3):
                    p = [torch.randint(0, 1000, (16,), generator=g).tolist()]
                    t = bench.run(p, 64)
                    samples[key]["decode"].append(statistics.median(t.decode_ms))
                    samples[key]["prefill16"].append(t.prefill_ms)
    for key, s in samples.items():
        row = {"model": model, "triton_argmax": key, "decode_ms_per_step": statistics.median(s["decode"]),
               "prefill16_ms": statistics.median(s["prefill16"]), "n": len(s["decode"])}
        print(json.dumps(row), flush=True); res["rows"].append(row)
    del benches, bench, runner; torch._dynamo.reset(); import gc; gc.collect(); torch.cuda.empty_cache()
os.makedirs("/tmp/o", exist_ok=True); json.dump(res, open("/tmp/o/ab_argmax.json", "w"), indent=1)
