import functools, json, os, sys, torch, torch.nn.functional as F
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/prefill_opt"); sys.path.insert(0, "benchmarks/decode_opt")
from profile_decode import graph_of
from graph_transitions import device_ms
dev = "cuda"
r = {}
def t(name, fn, calls=20):
    def many():
        for _ in range(calls): fn()
    r[name] = round(device_ms(graph_of(many)) * 1e3 / calls, 2); print(name, r[name], flush=True)
table = torch.randn(128256, 4096, dtype=torch.bfloat16, device=dev)
for n in (1, 16, 256, 1024):
    ids = torch.randint(0, 128256, (n,), device=dev)
    t(f"embedding_{n}", functools.partial(F.embedding, ids, table))
    t(f"index_select_{n}", functools.partial(torch.index_select, table, 0, ids))
for v in (128256, 151936):
    for b in (1, 4, 32):
        x = torch.randn(b, v, device=dev)
        t(f"argmax_{b}x{v}", functools.partial(torch.argmax, x, -1))
    xb = torch.randn(1, v, dtype=torch.bfloat16, device=dev)
    t(f"float_{v}", xb.float)
h = torch.randn(16, 4096, dtype=torch.bfloat16, device=dev)
start = torch.zeros(1, dtype=torch.int32, device=dev); lens = torch.full((1,), 16, dtype=torch.int32, device=dev)
t("last_gather", lambda: h[(start + lens - 1).long()])
# eager, host-inclusive: the sampler's greedy path
from tessera.sampling.sampler import Sampler, SamplingBatchInfo
from tessera.sampling.params import SamplingParams
info = SamplingBatchInfo.build(params=[SamplingParams(temperature=0.0)], seeds=[0], step_ids=[0], output_ids=None, prompt_ids=None, vocab_size=128256, device=torch.device(dev))
s = Sampler("triton"); x = torch.randn(1, 128256, device=dev)
r["sampler_eager_device_ms"] = device_ms(lambda: s.sample(x, info)); print(r)
os.makedirs("/tmp/o", exist_ok=True); json.dump(r, open("/tmp/o/small.json", "w"), indent=1)
