"""Probe: what Dynamo hands the piecewise backend on this torch, at compile time (`example_inputs`)
and at run time (the flat arguments of the trace call), for a tiny model. The direct call is built
from the run-time arguments; this shows why (and whether it works here).

    python scripts/gpu/pcg_dynamo_inputs.py [--device cuda] [--out probe.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "compilation")]


def describe(value: Any, ids: torch.Tensor | None, positions: torch.Tensor | None) -> str:
    from torch._subclasses.fake_tensor import is_fake

    if isinstance(value, torch.Tensor):
        tags = [type(value).__name__, str(tuple(value.shape))]
        if is_fake(value):
            tags.append("fake")
        if value is ids:
            tags.append("IS input_ids")
        if value is positions:
            tags.append("IS positions")
        return " ".join(tags)
    return f"{type(value).__name__} {value!r}"[:60]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    from hf_models import save_tiny_model
    from pcg_helpers import make_pcg_runner, pcg_of

    from tessera.compilation import backend as backend_module

    seen: dict[str, Any] = {}
    original_call = backend_module.PiecewiseBackend.__call__
    original_trace = backend_module.CompiledBackbone.trace

    def trace(self, input_ids, positions):
        seen["trace"] = (input_ids, positions)
        return original_trace(self, input_ids, positions)

    def call(self, gm, example_inputs):
        ids, positions = seen.get("trace", (None, None))
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        seen["compile_time"] = [f"{n.name}: {describe(e, ids, positions)}"
                                for n, e in zip(placeholders, example_inputs)]
        seen["counts"] = (len(placeholders), len(example_inputs))
        return original_call(self, gm, example_inputs)

    backend_module.PiecewiseBackend.__call__ = call
    backend_module.CompiledBackbone.trace = trace
    dtype = torch.bfloat16 if args.device != "cpu" else torch.float32
    path = save_tiny_model(tempfile.mkdtemp(), "llama", dtype=dtype)
    runner = make_pcg_runner(path, args.device, str(dtype).removeprefix("torch."),
                             piecewise_cuda_graph_max_tokens=8)
    pcg = pcg_of(runner)
    direct = pcg.backend.direct
    report = {
        "torch": torch.__version__, "device": args.device,
        "placeholders_vs_example_inputs": seen["counts"],
        "example_inputs (compile time)": seen["compile_time"],
        "direct_call": direct is not None, "no_direct_reason": pcg.backend.no_direct_reason,
        "direct_slots": None if direct is None else {
            "input_ids": direct.ids_slots, "positions": direct.positions_slots,
            "token_count": direct.count_slots, "output_index": direct.output_index,
            "static": sum(t is not None for t in direct.template)},
        "plans": sorted(getattr(pcg, "plans", {})),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
