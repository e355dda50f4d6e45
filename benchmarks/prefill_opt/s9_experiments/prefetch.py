"""Temp: stream GEMM with an L2 prefetch of its weight slice / early PDL trigger, in the chain."""
import dataclasses, functools, json, os, sys
import torch, torch.nn.functional as F
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/prefill_opt"); sys.path.insert(0, "benchmarks/decode_opt")
from stream_chain import chain, many
from graph_transitions import device_ms
from profile_decode import SHAPES, graph_of
from tessera.models.presets import PRESETS
from tessera.ops.triton import pdl
from tessera.ops.triton.stream_gemm import stream_config, stream_gemm
pdl.set_enabled(True)
torch.manual_seed(0)
VARIANTS = {"base": {}, "early": {"early_trigger": True}, "pf256": {"prefetch_k": 256}, "pf512": {"prefetch_k": 512},
            "pf1024": {"prefetch_k": 1024}, "pf4096": {"prefetch_k": 4096}, "early_pf512": {"early_trigger": True, "prefetch_k": 512},
            "early_pf1024": {"early_trigger": True, "prefetch_k": 1024}}
out = {}
for model, rows_list in (("llama3-8b", (16, 8)), ("qwen3-0.6b", (16,))):
    shapes = {n: s for n, s in SHAPES[model].items() if n != "lm_head"}
    layers = PRESETS[model]["num_hidden_layers"]
    weights = {n: [torch.randn(a, b, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(layers)] for n, (a, b) in shapes.items()}
    for m in rows_list:
        res = {"sweep_us": {}, "chain_ms": {}}
        x = {n: torch.randn(m, b, dtype=torch.bfloat16, device="cuda") for n, (a, b) in shapes.items()}
        for name, (n, k) in shapes.items():
            res["sweep_us"][name] = {"cublas": round(device_ms(graph_of(functools.partial(many, F.linear, x[name], weights[name]))) * 1e3 / layers, 2)}
            for label, kw in VARIANTS.items():
                cfg = dataclasses.replace(stream_config(n, k, rows=m), **kw)
                fn = functools.partial(stream_gemm, config=cfg)
                ref = F.linear(x[name], weights[name][3]).float()
                err = float((fn(x[name], weights[name][3]).float() - ref).norm() / ref.norm())
                assert err < 1e-2, (label, err)
                res["sweep_us"][name][label] = round(device_ms(graph_of(functools.partial(many, fn, x[name], weights[name]))) * 1e3 / layers, 2)
            print(model, m, name, json.dumps(res["sweep_us"][name]), flush=True)
        for rnd in range(2):
            for label, kw in [("cublas", None)] + list(VARIANTS.items()):
                if kw is None:
                    t = chain(m, weights, {}, {})
                else:
                    cfgs = {n: dataclasses.replace(stream_config(a, b, rows=m), **kw) for n, (a, b) in shapes.items()}
                    t = chain(m, weights, cfgs, dict.fromkeys(shapes, 1))
                res["chain_ms"].setdefault(label, []).append(t)
        print(model, m, "chain", json.dumps(res["chain_ms"]), flush=True)
        out[f"{model}_{m}"] = res
    del weights; torch.cuda.empty_cache()
os.makedirs("/tmp/o", exist_ok=True)
json.dump(out, open("/tmp/o/prefetch.json", "w"), indent=1)
