"""cuBLAS against cuBLASLt for the prefill GEMMs (GPU): torch's `preferred_blas_library`.

Per library: every linear shape of qwen3-0.6b and llama3-8b at M = 16 / 256 / 1024 rows, timed
inside a CUDA graph of 20 calls rotating over enough weight copies to defeat the L2 (as the
layers of a forward do), and the whole piecewise-graph prefill (ModelRunner.forward, random
prompt ids, `time_prefill`) of the given cases, on a runner built and captured under that library.

    python benchmarks/prefill_opt/blas_ab.py --case llama3-8b:16,256,1024 \\
        --case qwen3-0.6b:256 --out blas.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks", "decode_opt"))

from profile_decode import L2_BYTES, SHAPES, graph_of, time_ms

from tessera.bench.pcg import build_runner, free_memory, parse_case, time_prefill

LIBRARIES = ("cublas", "cublaslt")


def gemm_us(m: int, n: int, k: int, calls: int = 20) -> float:
    copies = max(2, min(calls, 1 + 2 * L2_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, dtype=torch.bfloat16, device="cuda") * 0.02
               for _ in range(copies)]
    x = torch.randn(m, k, dtype=torch.bfloat16, device="cuda")

    def many() -> None:
        for i in range(calls):
            F.linear(x, weights[i % copies])
    return round(time_ms(graph_of(many), 3, 7)["median"] * 1e3 / calls, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", type=parse_case, action="append", required=True)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    result: dict[str, Any] = {"device": torch.cuda.get_device_name(), "gemm_us": {},
                              "prefill_ms": {}}
    for lib in LIBRARIES:
        torch.backends.cuda.preferred_blas_library(lib)
        table = result["gemm_us"][lib] = {}
        for model, shapes in SHAPES.items():
            for name, (n, k) in shapes.items():
                if name == "lm_head":
                    continue
                for m in (16, 256, 1024):
                    table[f"{model}.{name}.m{m}"] = gemm_us(m, n, k)
        print(lib, json.dumps(table), flush=True)
    for model, sizes in args.case:
        for lib in LIBRARIES:
            torch.backends.cuda.preferred_blas_library(lib)
            with torch.inference_mode():
                runner, _ = build_runner(model, max(sizes), True, "eager", "cuda")
                for n in sizes:
                    ms = time_prefill(runner, n, warmup=3, repeat=args.repeat)["ms"]
                    result["prefill_ms"][f"{model}.{n}.{lib}"] = ms
                    print(f"{model} N={n} {lib}: {ms['median']:.3f} ms (min {ms['min']:.3f})",
                          flush=True)
            platform = runner.platform
            del runner
            free_memory(platform)
    torch.backends.cuda.preferred_blas_library("cublas")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
