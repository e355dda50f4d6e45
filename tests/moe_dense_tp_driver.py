"""Runs one engine's ModelRunner at a TP size (ranks over gloo, rank 0 here) through a fixed
sequence of extend and decode batches whose token counts are mostly not multiples of the TP
size, and saves every step's logits (or the error that stopped it): what test_moe_dense_tp
compares with TP=1.

    python tests/moe_dense_tp_driver.py MODEL TP OUT.pt '{"engine": "kwargs"}' [unfiltered]

`unfiltered` turns the capture-size multiples rule off in every rank
(tessera.compilation.capture_sizes.KEEP_SCATTER_MULTIPLES); the engine's own rank start-up
(tessera.engine.tp) cannot, so then this script starts the other ranks itself, each running
tessera.runner.tp_worker's plan loop as the engine's ranks do.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (request, new token ids) per step; "decode" steps give one token to each running request.
# Token counts 7, 2, 11, 3, 1, 4: at TP 2 and 4 most are not multiples.
STEPS = [
    ("extend", [("a", [1, 17, 42, 99, 5]), ("b", [3, 8])]),
    ("decode", [("a", [7]), ("b", [9])]),
    ("extend", [("b", [4, 5, 6]), ("a", [2, 11]), ("c", [21, 22, 23, 24, 25, 26])]),
    ("decode", [("a", [12]), ("b", [13]), ("c", [14])]),
    ("extend", [("d", [31])]),
    ("decode", [("a", [15]), ("b", [16]), ("c", [17]), ("d", [18])]),
]


def _unfiltered() -> None:
    from tessera.compilation import capture_sizes

    capture_sizes.KEEP_SCATTER_MULTIPLES = False


def _rank(args) -> None:  # a rank > 0 of the unfiltered run (multiprocessing target)
    from tessera.runner.tp_worker import run_worker

    _unfiltered()
    try:
        run_worker(args)
    except Exception:  # noqa: BLE001 - rank 0 reports the error; this rank just stops
        sys.exit(1)


def run(model: str, tp: int, engine: dict, unfiltered: bool) -> dict:
    from runner_driver import RunnerDriver

    from tessera.config.engine import EngineConfig
    from tessera.distributed import init_distributed
    from tessera.engine.tp import init_method_of, start_rank_zero
    from tessera.forward.batch import ForwardMode
    from tessera.runner.model_runner import ModelRunner
    from tessera.runner.tp_worker import WorkerArgs

    config = EngineConfig.from_kwargs(model_path=model, tp_size=tp, kv_cache_tokens=512,
                                      max_running_requests=4, disable_cuda_graph=True,
                                      dist_timeout=30.0, **engine).resolve()
    ranks, procs = None, []
    if tp > 1 and not unfiltered:
        ranks = start_rank_zero(config)
    elif tp > 1:
        _unfiltered()
        init_method = init_method_of(config)
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_rank, args=(WorkerArgs(config, r, tp, init_method),))
                 for r in range(1, tp)]
        for p in procs:
            p.start()
        init_distributed(0, tp, tp, "gloo", init_method, 30.0,
                         config.parallel.moe_dense_tp_size)
    out: dict = {"logits": []}
    try:
        runner = ModelRunner(config)
        pcg = [r for r in runner.graph_runners if hasattr(r, "capture_sizes")]
        out["capture_sizes"] = pcg[0].capture_sizes if pcg else None
        if pcg:  # which TP ops the compiled pieces hold, and how many pieces split the trunk
            from tessera.compilation.splitting import op_qualname

            pieces = pcg[0].backend.pieces
            out["splitting_pieces"] = sum(p.is_splitting for p in pieces)
            out["piece_ops"] = sorted(
                name for p in pieces if not p.is_splitting for n in p.module.graph.nodes
                if n.op == "call_function"
                and (name := op_qualname(n.target) or "").startswith("tessera::tp_"))
        driver = RunnerDriver(runner)
        rows: dict[str, int] = {}
        try:
            for mode, items in STEPS:
                for name, _ in items:
                    if name not in rows:
                        rows[name] = driver.new_request()
                step = [(rows[name], ids) for name, ids in items]
                _, logits = driver.step(step, mode=ForwardMode.DECODE if mode == "decode"
                                        else ForwardMode.EXTEND)
                out["logits"].append(logits)
            out["replays"] = pcg[0].replays if pcg else 0
        except Exception as e:  # noqa: BLE001 - the unfiltered run's expected failure
            # every rank fails the same check at once, so there is no one to stop
            out["error"] = f"{type(e).__name__}: {e}"
        else:
            runner.stop_other_ranks()
    finally:
        if ranks is not None:
            ranks.stop(timeout=10)
        for p in procs:
            p.join(timeout=20)
            if p.is_alive():
                p.kill()
        out["rank_exit_codes"] = [p.exitcode for p in procs]
    return out


if __name__ == "__main__":
    model, tp, path, engine = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
    torch.save(run(model, tp, engine, "unfiltered" in sys.argv[5:]), path)
    print(json.dumps({"ok": True}))
