"""Session 9 experiment: a standalone causal prefill attention (one request, no prefix, no K/V
store) with TMA descriptor loads of q/k/v, with and without Triton's warp_specialize, against
tessera's extend kernel, in CUDA graphs. Result: 2026-11-24_h200_s9_attn_ws.json."""
import functools, json, os, sys
import torch, triton, triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/prefill_opt"); sys.path.insert(0, "benchmarks/decode_opt")
from profile_decode import graph_of
from graph_transitions import device_ms
from tessera.attention.triton_ops.extend_attention import ExtendAttention

@triton.jit
def _step(q, k, v, acc, l_i, m_i, qk_scale, offs_m, n, BLOCK_N: tl.constexpr, MASK: tl.constexpr):
    qk = tl.dot(q, k.T) * qk_scale
    if MASK:
        offs_n = n + tl.arange(0, BLOCK_N)
        qk = tl.where(offs_n[None, :] <= offs_m[:, None], qk, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    p = tl.math.exp2(qk - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None]
    acc = tl.dot(p.to(v.dtype), v, acc)
    return acc, l_i, m_new

@triton.jit
def _attn_tma(dq, dk, dv, out_ptr, T, stride_ot, qk_scale, GROUP: tl.constexpr, D: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, WS: tl.constexpr):
    head = tl.program_id(0)
    m_block = tl.num_programs(1) - 1 - tl.program_id(1)
    kvh = head // GROUP
    m_start = m_block * BLOCK_M
    q = dq.load([m_start, head * D])
    offs_m = m_start + tl.arange(0, BLOCK_M)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    for n in tl.range(0, m_start, BLOCK_N, warp_specialize=WS):
        k = dk.load([n, kvh * D]); v = dv.load([n, kvh * D])
        acc, l_i, m_i = _step(q, k, v, acc, l_i, m_i, qk_scale, offs_m, n, BLOCK_N, False)
    for n in tl.range(m_start, tl.minimum(m_start + BLOCK_M, T), BLOCK_N):
        k = dk.load([n, kvh * D]); v = dv.load([n, kvh * D])
        acc, l_i, m_i = _step(q, k, v, acc, l_i, m_i, qk_scale, offs_m, n, BLOCK_N, True)
    o = acc / l_i[:, None]
    offs_d = tl.arange(0, D)
    tl.store(out_ptr + offs_m[:, None] * stride_ot + head * D + offs_d[None, :], o.to(out_ptr.dtype.element_ty), mask=offs_m[:, None] < T)

def attn_tma(qkv, hq, hk, d, out, bm, bn, ws, warps, stages):
    t = qkv.shape[0]
    q, k, v = qkv[:, :hq * d], qkv[:, hq * d:(hq + hk) * d], qkv[:, (hq + hk) * d:]
    dq = TensorDescriptor.from_tensor(q, [bm, d]); dk = TensorDescriptor.from_tensor(k, [bn, d]); dv = TensorDescriptor.from_tensor(v, [bn, d])
    return _attn_tma[(hq, triton.cdiv(t, bm))](dq, dk, dv, out, t, out.stride(0), d ** -0.5 * 1.4426950408889634,
                                               GROUP=hq // hk, D=d, BLOCK_M=bm, BLOCK_N=bn, WS=ws, num_warps=warps, num_stages=stages)

def time_us(fn, calls=20):
    def many():
        for _ in range(calls): fn()
    return round(device_ms(graph_of(many)) * 1e3 / calls, 2)

res = {"rows": []}
for model, hq, hk, d in (("llama3-8b", 32, 8, 128), ("qwen3-0.6b", 16, 8, 128)):
    for n in (256, 1024):
        qkv = torch.randn(n, (hq + 2 * hk) * d, dtype=torch.bfloat16, device="cuda")
        q = qkv[:, :hq * d].view(n, hq, d); k = qkv[:, hq * d:(hq + hk) * d].view(n, hk, d); v = qkv[:, (hq + hk) * d:].view(n, hk, d)
        ref = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1).repeat_interleave(hq // hk, 0), v.transpose(0, 1).repeat_interleave(hq // hk, 0), is_causal=True).transpose(0, 1)
        kc = torch.zeros(n + 1, hk, d, dtype=torch.bfloat16, device="cuda"); vc = torch.zeros_like(kc)
        table = torch.arange(1, n + 1, dtype=torch.int32, device="cuda").view(1, n)
        out = torch.empty(n, hq, d, dtype=torch.bfloat16, device="cuda")
        meta = [torch.tensor(x, dtype=dt, device="cuda") for x, dt in (([0], torch.int64), ([0], torch.int32), ([n], torch.int32), ([0], torch.int32))]
        loc = torch.arange(1, n + 1, dtype=torch.int64, device="cuda")
        ours = ExtendAttention(q, kc, vc, out, table, d ** -0.5, k_new=k, v_new=v)
        row = {"model": model, "tokens": n, "us": {"tessera": time_us(functools.partial(ours, *meta, n, loc))}}
        ours(*meta, n, loc); row["tessera_err"] = float((out.float() - ref.float()).abs().max())
        for bm, bn, warps, stages in ((128, 64, 8, 3), (128, 128, 8, 2), (64, 64, 4, 3), (128, 64, 4, 3)):
            for ws in (False, True):
                label = f"tma_m{bm}_n{bn}_w{warps}_s{stages}_ws{int(ws)}"
                try:
                    o2 = torch.empty(n, hq * d, dtype=torch.bfloat16, device="cuda")
                    kern = attn_tma(qkv, hq, hk, d, o2, bm, bn, ws, warps, stages)
                    err = float((o2.view(n, hq, d).float() - ref.float()).abs().max())
                    assert err < 2e-2, err
                    if model == "llama3-8b" and n == 1024 and bm == 128 and bn == 64 and warps == 8:
                        row.setdefault("ttgir_ws_ops", {})[label] = kern.asm["ttgir"].count("ttg.warp_specialize")
                    row["us"][label] = time_us(functools.partial(attn_tma, qkv, hq, hk, d, o2, bm, bn, ws, warps, stages))
                except Exception as e:
                    row.setdefault("failed", {})[label] = repr(e)[:160]
        print(json.dumps(row), flush=True); res["rows"].append(row)
os.makedirs("/tmp/o", exist_ok=True); json.dump(res, open("/tmp/o/attn_ws.json", "w"), indent=1)
