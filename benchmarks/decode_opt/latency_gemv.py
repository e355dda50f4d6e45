"""`tessera.bench.latency` with one-row linears (and the LM head) through the Triton GEMV.

    python benchmarks/decode_opt/latency_gemv.py --gemv-json gemv.json <bench latency args>

Patches tessera.layers.linear.LinearBase.forward and ParallelLMHead.compute_logits in this
process only, for the (N, K) shapes where the sweep (profile_decode.py gemv) beat cuBLAS by >= 5%:
it measures what wiring tessera.ops.triton.gemv into the linear layers would give.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from profile_decode import gemv_patches, load_gemv_winners


def main() -> int:
    argv = sys.argv[1:]
    i = argv.index("--gemv-json")
    path = argv[i + 1]
    del argv[i:i + 2]
    winners = load_gemv_winners(path)
    print(f"GEMV for {sorted(winners)}", flush=True)
    from tessera.bench import latency

    with gemv_patches(winners):
        return latency.main(argv)


if __name__ == "__main__":
    raise SystemExit(main())
