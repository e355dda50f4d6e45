"""Temp: a tiled Triton GEMM (pointer loads / host TMA descriptors) vs cuBLAS on the mid-M shapes, in graphs."""
import functools, itertools, json, os, sys
import torch, torch.nn.functional as F
import triton, triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor
sys.path.insert(0, os.getcwd()); sys.path.insert(0, "benchmarks/prefill_opt"); sys.path.insert(0, "benchmarks/decode_opt")
from profile_decode import SHAPES, graph_of
from graph_transitions import device_ms

@triton.jit
def _ptr_kernel(x_ptr, w_ptr, y_ptr, M, N, K, sxm, swn, sym, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM); num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n; gid = pid // group; first_m = gid * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % gsize; pid_n = (pid % group) // gsize
    offs_m = pid_m * BM + tl.arange(0, BM); offs_n = pid_n * BN + tl.arange(0, BN); offs_k = tl.arange(0, BK)
    xp = x_ptr + offs_m[:, None].to(tl.int64) * sxm + offs_k[None, :]
    wp = w_ptr + offs_n[:, None].to(tl.int64) * swn + offs_k[None, :]
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(xp + k, mask=offs_m[:, None] < M, other=0.0)
        b = tl.load(wp + k, mask=offs_n[:, None] < N, other=0.0)
        acc = tl.dot(a, tl.trans(b), acc)
    yp = y_ptr + offs_m[:, None].to(tl.int64) * sym + offs_n[None, :]
    tl.store(yp, acc.to(y_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))

@triton.jit
def _tma_kernel(dx, dw, dy, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM); num_n = tl.cdiv(N, BN)
    group = GROUP_M * num_n; gid = pid // group; first_m = gid * GROUP_M
    gsize = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % gsize; pid_n = (pid % group) // gsize
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k in range(0, K, BK):
        a = dx.load([pid_m * BM, k]); b = dw.load([pid_n * BN, k])
        acc = tl.dot(a, b.T, acc)
    dy.store([pid_m * BM, pid_n * BN], acc.to(dy.dtype))

def gemm(x, w, cfg):
    kind, bm, bn, bk, st, nw = cfg
    m, k = x.shape; n = w.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
    if kind == "ptr":
        _ptr_kernel[grid](x, w, y, m, n, k, x.stride(0), w.stride(0), y.stride(0), BM=bm, BN=bn, BK=bk, GROUP_M=8, num_stages=st, num_warps=nw)
    else:
        _tma_kernel[grid](TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]), TensorDescriptor.from_tensor(y, [bm, bn]), m, n, k, BM=bm, BN=bn, BK=bk, GROUP_M=8, num_stages=st, num_warps=nw)
    return y

def many(fn, x, ws):
    for w in ws: fn(x, w)

CFGS = [(kind, bm, bn, 64, st, nw) for kind in ("ptr", "tma") for bm, bn in ((64, 128), (64, 256), (128, 128), (128, 256)) for st in (3, 4) for nw in (4, 8)
        if not (bm == 128 and bn == 256 and nw == 4) and not (bm * bn >= 128 * 256 and st == 4 and kind == "ptr")]
res = {"device": torch.cuda.get_device_name(), "rows": []}
torch.manual_seed(0)
for model, ms in (("llama3-8b", (256, 1024)), ("qwen3-0.6b", (256, 1024))):
    for name, (n, k) in SHAPES[model].items():
        if name == "lm_head": continue
        ws = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(8 if model == "llama3-8b" else 32)]
        for m in ms:
            x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
            row = {"model": model, "proj": name, "m": m, "n": n, "k": k, "us": {}}
            row["us"]["cublas"] = round(device_ms(graph_of(functools.partial(many, F.linear, x, ws))) * 1e3 / len(ws), 2)
            ref = F.linear(x, ws[0]).float()
            for cfg in CFGS:
                label = "_".join(map(str, cfg))
                try:
                    fn = functools.partial(gemm, cfg=cfg)
                    err = float((fn(x, ws[0]).float() - ref).norm() / ref.norm()); assert err < 1e-2, err
                    row["us"][label] = round(device_ms(graph_of(functools.partial(many, fn, x, ws))) * 1e3 / len(ws), 2)
                except Exception as e:
                    row.setdefault("failed", {})[label] = repr(e)[:80]
            best = min((v, kk) for kk, v in row["us"].items() if kk != "cublas")
            row["best"] = best[1]; row["best_us"] = best[0]
            flops = 2 * m * n * k
            print(f"{model} {name} M={m}: cublas {row['us']['cublas']} us ({flops / row['us']['cublas'] / 1e6:.0f} TF) best {best[1]} {best[0]} us ({flops / best[0] / 1e6:.0f} TF)", flush=True)
            res["rows"].append(row)
        del ws
os.makedirs("/tmp/o", exist_ok=True); json.dump(res, open("/tmp/o/tile_gemm.json", "w"), indent=1)
