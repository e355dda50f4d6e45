"""Kernel times in CUDA graphs: rotary q+k vs k only; extend attention with / without ROPE_Q."""
import json, sys
import torch
from tessera.attention.triton_ops.extend_attention import ExtendAttention
from tessera.ops.rotary import RotaryEmbedding
from tessera.ops.triton.rotary import rotary_embedding, rotary_embedding_one

def graph_us(fn, calls=20):
    for _ in range(3): fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls): fn()
    for _ in range(3): g.replay()
    ts = []
    for _ in range(10):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); g.replay(); e.record(); torch.cuda.synchronize()
        ts.append(s.elapsed_time(e) * 1e3 / calls)
    return sorted(ts)[len(ts) // 2]

res = {}
rope = RotaryEmbedding(128, 131072, 500000.0).cuda()
for name, hq, hk in (("llama3-8b", 32, 8), ("qwen3-0.6b", 16, 8)):
    for n in (256, 1024):
        qkv = torch.randn(n, (hq + 2 * hk) * 128, device="cuda", dtype=torch.bfloat16)
        q = qkv[:, :hq * 128].view(n, hq, 128)
        k = qkv[:, hq * 128:(hq + hk) * 128].view(n, hk, 128)
        v = qkv[:, (hq + hk) * 128:].view(n, hk, 128)
        pos = torch.arange(n, device="cuda")
        cache = rope.cos_sin_cache
        r = {"rotary_qk": graph_us(lambda: rotary_embedding(pos, q, k, cache)),
             "rotary_k": graph_us(lambda: rotary_embedding_one(pos, k, cache))}
        kc = torch.zeros(n + 8, hk, 128, device="cuda", dtype=torch.bfloat16)
        vc = torch.zeros_like(kc)
        table = torch.zeros(2, n + 8, dtype=torch.int32, device="cuda")
        out = torch.empty(n, hq, 128, device="cuda", dtype=torch.bfloat16)
        meta = (torch.zeros(1, dtype=torch.int64, device="cuda"),
                torch.zeros(1, dtype=torch.int32, device="cuda"),
                torch.full((1,), n, dtype=torch.int32, device="cuda"),
                torch.zeros(1, dtype=torch.int32, device="cuda"), n,
                torch.arange(1, n + 1, device="cuda"))
        qr = q.contiguous()
        for label, qq, q_rope, tma in (("extend", qr, None, None), ("extend_q_rope", q, (pos, cache), None),
                                       ("extend_ptr", qr, None, False), ("extend_q_rope_ptr", q, (pos, cache), False)):
            launch = ExtendAttention(qq, kc, vc, out, table, 128 ** -0.5, k_new=k, v_new=v,
                                     q_rope=q_rope, tma=tma)
            r[label] = graph_us(lambda: launch(*meta))
            r[label + "_path_tma"] = launch.tile(n)[1]
        res[f"{name}:{n}"] = r
        print(name, n, {k2: (round(v2, 2) if isinstance(v2, float) else v2) for k2, v2 in r.items()}, flush=True)
json.dump(res, open(sys.argv[1], "w"), indent=1)
