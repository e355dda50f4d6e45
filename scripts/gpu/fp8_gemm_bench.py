"""Block-FP8 GEMM (W8A8, 128x128 weight blocks, per-token-group activations) against the bf16
GEMM (torch.matmul / cuBLAS) at deepseek-v2-lite's linear shapes, one GPU: time of the GEMM
alone, of activation quant + GEMM (what a layer runs), their ratio to bf16, and the error against
the bf16 product of the dequantized operands.

    PYTHONPATH=. python3 scripts/gpu/fp8_gemm_bench.py --out fp8_gemm_bench.json   (from the repo root)
"""
from __future__ import annotations

import argparse
import functools
import json

import torch
import triton.testing as tt

from tessera.ops.fp8_gemm import dequantize_block_fp8, quantize_block_fp8, w8a8_block_fp8_matmul
from tessera.ops.quant import per_token_group_quant_fp8

# (name, N, K) of deepseek-v2-lite's linears: q_proj, kv_a_proj_with_mqa, o_proj, dense gate_up,
# dense down, lm head
SHAPES = [("q_proj", 3072, 2048), ("kv_a_proj", 576, 2048), ("o_proj", 2048, 2048),
          ("gate_up", 21888, 2048), ("down", 2048, 10944), ("lm_head", 102400, 2048)]
TOKENS = (1, 32, 256, 1024, 4096)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    rows = []
    block = (128, 128)
    for name, n, k in SHAPES:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * k ** -0.5
        wq, ws = quantize_block_fp8(w, block)
        w_deq = dequantize_block_fp8(wq, ws, block, torch.bfloat16)
        for m in TOKENS:
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            xq, xs = per_token_group_quant_fp8(x, 128)
            gemm = functools.partial(w8a8_block_fp8_matmul, xq, xs, wq, ws, block,
                                     torch.bfloat16)

            def layer(x=x, wq=wq, ws=ws):
                q, s = per_token_group_quant_fp8(x, 128)
                return w8a8_block_fp8_matmul(q, s, wq, ws, block, torch.bfloat16)

            ref = x @ w_deq.T
            err = float((gemm().float() - ref.float()).norm() / ref.float().norm())
            t_fp8 = tt.do_bench(gemm, warmup=10, rep=50)
            t_layer = tt.do_bench(layer, warmup=10, rep=50)
            t_bf16 = tt.do_bench(functools.partial(torch.matmul, x, w.T), warmup=10, rep=50)
            row = {"shape": name, "n": n, "k": k, "m": m, "fp8_gemm_ms": t_fp8,
                   "fp8_quant_gemm_ms": t_layer, "bf16_ms": t_bf16,
                   "speedup_gemm": t_bf16 / t_fp8, "speedup_layer": t_bf16 / t_layer,
                   "rel_err_vs_dequantized": err}
            rows.append(row)
            print(f"{name:9s} N={n:6d} K={k:5d} M={m:5d}: fp8 {t_fp8:.4f} ms (+quant "
                  f"{t_layer:.4f}), bf16 {t_bf16:.4f} ms, x{row['speedup_gemm']:.2f} "
                  f"(x{row['speedup_layer']:.2f} with quant), rel err {err:.1e}")
    report = {"device": torch.cuda.get_device_name(), "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
