import dataclasses, functools, importlib, json, os, sys
from unittest import mock
import torch, torch.nn.functional as F
import triton, triton.language as tl
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/prefill_opt"); sys.path.insert(0, "benchmarks/decode_opt")
from profile_decode import graph_of
from graph_transitions import device_ms
from tessera.ops.triton import pdl
from tessera.ops.triton.argmax import argmax as targmax
r = {}
def t(name, fn, calls=20):
    def many():
        for _ in range(calls): fn()
    r[name] = round(device_ms(graph_of(many)) * 1e3 / calls, 2); print(name, r[name], flush=True)

@triton.jit
def _emb(ids_ptr, w_ptr, out_ptr, H, BLOCK: tl.constexpr):
    tok = tl.program_id(0); blk = tl.program_id(1)
    i = tl.load(ids_ptr + tok).to(tl.int64)
    offs = blk * BLOCK + tl.arange(0, BLOCK); m = offs < H
    tl.store(out_ptr + tok.to(tl.int64) * H + offs, tl.load(w_ptr + i * H + offs, mask=m), mask=m)
def temb(ids, w, block=1024):
    out = torch.empty(ids.shape[0], w.shape[1], dtype=w.dtype, device=w.device)
    _emb[(ids.shape[0], triton.cdiv(w.shape[1], block))](ids, w, out, w.shape[1], BLOCK=block, num_warps=4)
    return out
table = torch.randn(128256, 4096, dtype=torch.bfloat16, device="cuda")
for n in (1, 4, 16, 64, 256):
    ids = torch.randint(0, 128256, (n,), device="cuda")
    assert torch.equal(temb(ids, table), F.embedding(ids, table)) and torch.equal(table[ids], F.embedding(ids, table))
    t(f"embedding_{n}", functools.partial(F.embedding, ids, table))
    t(f"index_{n}", lambda: table[ids])
    t(f"triton_emb_{n}", functools.partial(temb, ids, table))
for pdl_on in (False, True):
    pdl.set_enabled(pdl_on)
    for v in (128256, 151936):
        for b in (1, 16):
            x = torch.randn(b, v, device="cuda")
            assert torch.equal(targmax(x), x.argmax(-1))
            t(f"torch_argmax_{b}x{v}", functools.partial(torch.argmax, x, -1))
            t(f"triton_argmax_{b}x{v}_pdl{int(pdl_on)}", functools.partial(targmax, x))
pdl.set_enabled(False)
os.makedirs("/tmp/o", exist_ok=True); json.dump(r, open("/tmp/o/small_kernels.json", "w"), indent=1)

# A/B: stream GEMM with the PDL trigger at its start vs after its K loop, real forward
from ab_prefill import interleaved
from tessera.compilation.bench_pcg import build_runner, free_memory
sg = importlib.import_module("tessera.ops.triton.stream_gemm")
orig = sg.stream_config
res = {"device": torch.cuda.get_device_name(), "models": []}
for model, sizes in (("llama3-8b", (16, 8, 32)), ("qwen3-0.6b", (16,))):
    with torch.inference_mode():
        variants = []
        for early in (True, False):
            cfg = (lambda *a, **k: dataclasses.replace(orig(*a, **k), early_trigger=True)) if early else orig
            with mock.patch.object(sg, "stream_config", cfg):
                runner, _ = build_runner(model, 64, True, "eager", "cuda")
            variants.append(({"early_trigger": early}, runner, lambda: None))
        rows = [row for n in sizes for row in interleaved(model, n, variants, 4, 20)]
    platform = variants[0][1].platform
    del variants, runner; free_memory(platform)
    res["models"].append({"model": model, "variants": rows})
json.dump(res, open("/tmp/o/ab_early_trigger.json", "w"), indent=1)
