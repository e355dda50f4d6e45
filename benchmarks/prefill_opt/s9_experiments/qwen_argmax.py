import json, os, statistics, sys, time
from unittest import mock
import torch
sys.path.insert(0, os.getcwd())
from tessera.config import EngineConfig
from tessera.runner.model_runner import ModelRunner
from tessera.bench.latency import TesseraLatency
import tessera.ops.argmax as am
res = {"rows": []}
for model in ("qwen3-0.6b", "llama3-8b"):
    cfg = EngineConfig.from_kwargs(model_path=model, device="cuda", dtype="bfloat16", load_format="dummy",
                                   kv_cache_tokens=8192, max_running_requests=4, piecewise_cuda_graph_max_tokens=256)
    runner = ModelRunner(cfg); bench = TesseraLatency(runner)
    g = torch.Generator().manual_seed(0)
    s = {True: [], False: []}; s1 = {True: [], False: []}
    with torch.inference_mode():
        for rnd in range(10):
            for flag in ((True, False) if rnd % 2 else (False, True)):
                with mock.patch.object(am, "use_triton_argmax", am.use_triton_argmax if flag else (lambda x: False)):
                    for _ in range(5):
                        p = [torch.randint(0, 1000, (16,), generator=g).tolist()]
                        s[flag].append(bench.run(p, 1).prefill_ms)
                        s1[flag].append(bench.run(p, 8).prefill_ms)
    for flag in (True, False):
        row = {"model": model, "triton_argmax": flag, "prefill16_only_ms": statistics.median(s[flag][5:]), "prefill16_then_decode_ms": statistics.median(s1[flag][5:])}
        print(json.dumps(row), flush=True); res["rows"].append(row)
    del runner, bench; torch._dynamo.reset(); import gc; gc.collect(); torch.cuda.empty_cache()
