"""`tessera.bench.latency` with the proposed GEMV wiring (and optionally PDL).

    python benchmarks/decode_opt/latency_gemv.py [--pdl] <tessera bench latency args>

Patches tessera.layers.linear.LinearBase.forward and ParallelLMHead.compute_logits in this process
to call tessera.ops.linear (one-row inputs on CUDA through the Triton GEMV, F.linear otherwise):
what wiring it into those two files would give. `--pdl` also turns on programmatic dependent
launch for tessera's Triton kernels (same as TESSERA_PDL=1).
"""
from __future__ import annotations

import contextlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_decode import linear_patches, pdl_on


def main() -> int:
    argv = sys.argv[1:]
    use_pdl = "--pdl" in argv
    argv = [a for a in argv if a != "--pdl"]
    from tessera.bench import latency

    with linear_patches(), (pdl_on() if use_pdl else contextlib.nullcontext()):
        print(f"[latency_gemv] linear -> tessera.ops.linear, PDL {'on' if use_pdl else 'off'}",
              flush=True)
        return latency.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
