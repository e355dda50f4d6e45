"""Experiment (session 11): do cuBLASLt algorithms other than the heuristic's first beat
F.linear on the prefill GEMM shapes? ctypes bindings to libcublasLt (the one torch loaded): per
shape, the heuristic's top-K algorithms (and split-K variants of the first few), each timed in a
CUDA graph of calls over enough weight copies to defeat the L2, against F.linear.

    python benchmarks/prefill_opt/lt_algos.py OUT.json

Session 11's result (benchmarks/results/2026-11-24_h200_s11_lt_algos.json): the best of them is
within -4..+7% of F.linear per shape (confirmed by alternating re-timings), ~1 us a layer at most:
not worth a second GEMM path. The config read-back (`cfg`) came back empty on that machine
(the attribute query wants the attribute's exact size); the timings do not depend on it.
"""
import ctypes
import json
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                "decode_opt"))
from profile_decode import SHAPES, graph_of, time_ms


def lib_path() -> str:
    torch.randn(64, 64, device="cuda") @ torch.randn(64, 64, device="cuda")
    torch.cuda.synchronize()
    with open("/proc/self/maps") as maps:
        for line in maps:
            if "libcublasLt" in line:
                return line.split()[-1]
    raise RuntimeError("libcublasLt not loaded")


class Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class Heur(ctypes.Structure):
    _fields_ = [("algo", Algo), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int),
                ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


LT = ctypes.CDLL(lib_path())
P = ctypes.c_void_p


def ok(status, what):
    if status != 0:
        raise RuntimeError(f"{what}: cublas status {status}")


HANDLE = P()
ok(LT.cublasLtCreate(ctypes.byref(HANDLE)), "create")
WS_BYTES = 64 << 20
WS = torch.empty(WS_BYTES, dtype=torch.uint8, device="cuda")
COMPUTE_32F, R_32F, R_16BF = 68, 0, 14


def layout(rows, cols, ld):
    lay = P()
    ok(LT.cublasLtMatrixLayoutCreate(ctypes.byref(lay), R_16BF, ctypes.c_uint64(rows),
                                     ctypes.c_uint64(cols), ctypes.c_int64(ld)), "layout")
    return lay


class Problem:
    """y[M, N] = x[M, K] @ w[N, K].T as column-major D[N, M] = op_T(A = w) @ B = x."""

    def __init__(self, m, n, k):
        self.m, self.n, self.k = m, n, k
        self.desc = P()
        ok(LT.cublasLtMatmulDescCreate(ctypes.byref(self.desc), COMPUTE_32F, R_32F), "desc")
        for attr, val in ((3, 1), (4, 0)):  # TRANSA = T, TRANSB = N
            v = ctypes.c_int32(val)
            ok(LT.cublasLtMatmulDescSetAttribute(self.desc, attr, ctypes.byref(v), 4), "attr")
        self.a, self.b, self.d = layout(k, n, k), layout(k, m, k), layout(n, m, n)
        self.pref = P()
        ok(LT.cublasLtMatmulPreferenceCreate(ctypes.byref(self.pref)), "pref")
        wsb = ctypes.c_uint64(WS_BYTES)
        ok(LT.cublasLtMatmulPreferenceSetAttribute(self.pref, 1, ctypes.byref(wsb), 8), "pref ws")
        self.alpha, self.beta = ctypes.c_float(1.0), ctypes.c_float(0.0)

    def heuristics(self, count):
        res = (Heur * count)()
        got = ctypes.c_int(0)
        ok(LT.cublasLtMatmulAlgoGetHeuristic(HANDLE, self.desc, self.a, self.b, self.d, self.d,
                                             self.pref, count, res, ctypes.byref(got)), "heur")
        return [res[i] for i in range(got.value) if res[i].state == 0]

    def check(self, algo):
        res = Heur()
        st = LT.cublasLtMatmulAlgoCheck(HANDLE, self.desc, self.a, self.b, self.d, self.d,
                                        ctypes.byref(algo), ctypes.byref(res))
        return res if st == 0 and res.workspaceSize <= WS_BYTES else None

    def run(self, algo, x, w, y):
        st = LT.cublasLtMatmul(HANDLE, self.desc, ctypes.byref(self.alpha), P(w.data_ptr()),
                               self.a, P(x.data_ptr()), self.b, ctypes.byref(self.beta),
                               P(y.data_ptr()), self.d, P(y.data_ptr()), self.d,
                               ctypes.byref(algo), P(WS.data_ptr()), ctypes.c_size_t(WS_BYTES),
                               P(torch.cuda.current_stream().cuda_stream))
        ok(st, "matmul")


def cfg(algo):
    out = {}
    for name, attr in (("id", 0), ("tile", 1), ("splitk", 2), ("red", 3), ("swizzle", 4),
                       ("custom", 5), ("stages", 6), ("inner", 7), ("cluster", 8)):
        buf = ctypes.c_uint64(0)
        wr = ctypes.c_size_t(0)
        st = LT.cublasLtMatmulAlgoConfigGetAttribute(ctypes.byref(algo), attr, ctypes.byref(buf),
                                                     8, ctypes.byref(wr))
        if st == 0:
            out[name] = int(buf.value) & ((1 << (8 * wr.value)) - 1) if wr.value else None
    return out


def set_splitk(algo, split):
    new = Algo()
    ctypes.memmove(ctypes.byref(new), ctypes.byref(algo), ctypes.sizeof(Algo))
    v = ctypes.c_int32(split)
    st = LT.cublasLtMatmulAlgoConfigSetAttribute(ctypes.byref(new), 2, ctypes.byref(v), 4)
    return new if st == 0 else None


def shape_rows(model, name, m, n, k, top):
    copies = max(4, min(32, (256 << 20) // (n * k * 2)))
    ws = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02 for _ in range(copies)]
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")
    y = torch.empty(m, n, dtype=torch.bfloat16, device="cuda")
    ref = F.linear(x, ws[0]).float()
    prob = Problem(m, n, k)
    cands = [(f"h{i}", h.algo) for i, h in enumerate(prob.heuristics(top))]
    for label, algo in list(cands[:6]):
        for split in (2, 3, 4, 6, 8):
            new = set_splitk(algo, split)
            if new is not None and prob.check(new) is not None:
                cands.append((f"{label}_sk{split}", new))

    def lin():
        for w in ws:
            F.linear(x, w)

    def lt(algo):
        def calls():
            for w in ws:
                prob.run(algo, x, w, y)
        return calls

    def per_call_us(fn) -> float:
        """us per call: the median of 9 replays of a graph of `copies` calls."""
        return round(time_ms(graph_of(fn), 1, 9)["median"] * 1e3 / copies, 2)

    us = {"F.linear": per_call_us(lin)}
    info = {}
    for label, algo in cands:
        try:
            prob.run(algo, x, ws[0], y)
            torch.cuda.synchronize()
            err = float((y.float() - ref).norm() / ref.norm())
            if err > 1e-2:
                us[label] = f"err {err:.3g}"
                continue
            us[label] = per_call_us(lt(algo))
            info[label] = cfg(algo)
        except Exception as e:  # noqa: BLE001
            us[label] = repr(e)[:80]
    nums = {k2: v for k2, v in us.items() if isinstance(v, float) and k2 != "F.linear"}
    best = min(nums, key=nums.get) if nums else None
    # confirm: F.linear, h0 and the best, alternated
    confirm = {}
    if best:
        fns = {"F.linear": lin, "h0": lt(dict(cands)["h0"]), best: lt(dict(cands)[best])}
        for _ in range(3):
            for label in ("F.linear", "h0", best):
                confirm.setdefault(label, []).append(per_call_us(fns[label]))
    row = {"model": model, "proj": name, "m": m, "n": n, "k": k, "candidates": len(cands),
           "us": us, "best": best, "best_cfg": info.get(best), "h0_cfg": info.get("h0"),
           "confirm": confirm}
    print(json.dumps({k2: v for k2, v in row.items() if k2 != "us"}), flush=True)
    return row


def main():
    out = sys.argv[1]
    rows = []
    plan = [("llama3-8b", 256), ("qwen3-0.6b", 256), ("llama3-8b", 1024), ("llama3-8b", 16)]
    for model, m in plan:
        for name, (n, k) in SHAPES[model].items():
            if name == "lm_head":
                continue
            rows.append(shape_rows(model, name, m, n, k, 32))
            with open(out, "w") as f:
                json.dump({"device": torch.cuda.get_device_name(), "rows": rows,
                           "command": "python benchmarks/prefill_opt/lt_algos.py OUT.json"},
                          f, indent=1)


if __name__ == "__main__":
    main()
