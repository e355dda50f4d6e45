"""Temp: how the bench-latency prefill step waits for its token (host wake-up tail)."""
import ctypes, json, os, statistics, sys, time
sys.path.insert(0, os.getcwd())
import torch
if os.environ.get("SPIN"):
    path = next(l.split()[-1] for l in open("/proc/self/maps") if "libcudart" in l)
    rt = ctypes.CDLL(path)
    flag = {"spin": 1, "yield": 2, "block": 4}[os.environ["SPIN"]]
    print("setflags", path, os.environ["SPIN"], rt.cudaSetDeviceFlags(flag), flush=True)
from tessera.compilation.bench_pcg import build_runner
from tessera.bench.latency import TesseraLatency
from tessera.runner.forward_batch import ForwardBatch, ForwardMode
from tessera.platforms.transfer import to_host_async

def one(bench, runner, n, how, seed):
    prompt = torch.randint(0, runner.model_config.vocab_size, (n,), generator=torch.Generator().manual_seed(seed)).tolist()
    info = bench._greedy_info(1)
    row = runner.req_to_token_pool.alloc()
    ev = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
    try:
        torch.cuda.synchronize()
        if how == "sleep":
            time.sleep(0.002)
        t0 = time.perf_counter(); ev[0].record()
        slots = runner.allocator.alloc(n)
        fb = ForwardBatch.build(ForwardMode.EXTEND, prompt, [row], [0], [n], slots, runner.device)
        ev[1].record()
        logits = runner.forward(fb).next_token_logits
        tok = bench.sampler.sample(logits, info).token_ids
        if how in ("tolist", "sleep"):
            ev[2].record(); tokens = tok.tolist()
        elif how == "event":
            (h,), e = to_host_async(runner.platform, tok); ev[2].record(); e.synchronize(); tokens = h.tolist()
        elif how == "poll":
            (h,), e = to_host_async(runner.platform, tok); ev[2].record()
            while not e.query():
                pass
            tokens = h.tolist()
        torch.cuda.synchronize()
        t1 = time.perf_counter()
    finally:
        runner.req_to_token_pool.free(row); runner.allocator.clear()
    dev = ev[0].elapsed_time(ev[2]) * 1e3
    return {"host": (t1 - t0) * 1e6, "dev": dev, "build_dev": ev[0].elapsed_time(ev[1]) * 1e3, "tail": (t1 - t0) * 1e6 - dev}

out = {"spin": os.environ.get("SPIN", ""), "rows": []}
for model, n in [("llama3-8b", 16), ("qwen3-0.6b", 256)]:
    with torch.inference_mode():
        runner, _ = build_runner(model, 256, True, "eager", "cuda")
        bench = TesseraLatency(runner)
        hows = ["tolist", "event", "poll", "sleep"]
        res = {h: [] for h in hows}
        for r in range(6):
            for h in hows:
                for i in range(8):
                    x = one(bench, runner, n, h, 100 * r + i)
                    if i >= 2: res[h].append(x)
        for h in hows:
            row = {"model": model, "n": n, "how": h, **{k: round(statistics.median([x[k] for x in res[h]]), 1) for k in res[h][0]}}
            print(json.dumps(row), flush=True); out["rows"].append(row)
        # the bench itself
        p = [torch.randint(0, 1000, (n,)).tolist()]
        ms = [bench.run(p, 1).prefill_ms for _ in range(20)][3:]
        row = {"model": model, "n": n, "how": "bench", "host": round(statistics.median(ms) * 1e3, 1)}
        print(json.dumps(row), flush=True); out["rows"].append(row)
    del runner, bench
    torch._dynamo.reset(); import gc; gc.collect(); torch.cuda.empty_cache()
os.makedirs("/tmp/o", exist_ok=True)
json.dump(out, open(f"/tmp/o/wait_{os.environ.get('SPIN','default')}.json", "w"), indent=1)
