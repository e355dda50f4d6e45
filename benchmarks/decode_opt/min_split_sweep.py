"""Decode ms/step by the decode attention's fewest keys per split (GPU).

`tessera.attention.triton.MIN_KEYS_PER_SPLIT` decides how many key-range splits a request's
decode attention uses at a given context: fewer keys per split means more programs in parallel
but, past one split, a workspace round trip and a merge. At bs=1 and a short context the kernel
is a chain of dependent loads, so the split count shows in the step time. Each value runs
`tessera bench latency` in its own process (decode graphs captured with that value).

    python benchmarks/decode_opt/min_split_sweep.py --model-path llama3-8b --values 64 128 256 \\
        --out sweep.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CODE = ("import sys, tessera.attention.triton as t; t.MIN_KEYS_PER_SPLIT = {value}; "
        "from tessera.bench.latency import main; sys.exit(main({argv!r}))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-path", default="llama3-8b")
    parser.add_argument("--values", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    results = []
    for value in args.values:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            path = f.name
        argv = ["--model-path", args.model_path, "--load-format", "dummy", "--dtype",
                "bfloat16", "--batch-size", *map(str, args.batch_size), "--input-len",
                str(args.input_len), "--output-len", str(args.output_len), "--repeat", "3",
                "--disable-piecewise-cuda-graph", "--out", path]
        proc = subprocess.run([sys.executable, "-c", CODE.format(value=value, argv=argv)],
                              check=False, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-2000:], file=sys.stderr)
            continue
        with open(path) as f:
            data = json.load(f)
        os.unlink(path)
        for r in data["results"]:
            row = {"min_keys_per_split": value, "batch_size": r["batch_size"],
                   "decode_ms_per_step": r["decode_ms_per_step"]["median"],
                   "forward_device_ms": r.get("decode_forward_device_ms", {}).get("median")}
            results.append(row)
            print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
