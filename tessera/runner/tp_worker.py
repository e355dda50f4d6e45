"""A tensor-parallel rank other than 0: build this rank's ModelRunner, then run rank 0's plans.

Started by the engine (tessera.engine.tp) as `python -m tessera.runner.tp_worker`, its
WorkerArgs pickled on stdin. It exits 0 when rank 0 sends the stop plan, and 1 when anything
fails: a collective erroring because another rank died, a start-up error, or its parent (the
process that started it) disappearing, which a watchdog thread notices within a second even
while the main thread is blocked in a collective.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import sys
import threading
import time

import torch

from tessera.config.engine import EngineConfig

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class WorkerArgs:
    config: EngineConfig
    rank: int
    world_size: int
    init_method: str
    log_level: str = "info"


def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(0.5)
        if os.getppid() != parent:
            logger.error("the process that started this rank is gone; exiting")
            os._exit(1)


def run_worker(args: WorkerArgs) -> None:
    from tessera.distributed import destroy_distributed, init_distributed
    from tessera.platforms import platform_for_device
    from tessera.runner.batch_plan import receive_plan
    from tessera.runner.model_runner import ModelRunner

    config = args.config.resolve()
    parallel = config.parallel
    init_distributed(args.rank, args.world_size, parallel.tp_size,
                     platform_for_device(config.load.device).dist_backend, args.init_method,
                     parallel.dist_timeout, parallel.moe_dense_tp_size)
    runner = ModelRunner(config)
    steps = 0
    with torch.inference_mode():
        while True:
            batch = receive_plan(runner.req_to_token_pool, runner.device)
            if batch is None:
                break
            runner.forward(batch)
            steps += 1
    logger.info("rank %d: stopped by rank 0 after %d steps", args.rank, steps)
    destroy_distributed()


def main() -> int:
    args: WorkerArgs = pickle.load(sys.stdin.buffer)
    logging.basicConfig(level=args.log_level.upper(),
                        format=f"[%(asctime)s rank {args.rank} %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    try:
        run_worker(args)
    except Exception as e:  # noqa: BLE001 - every failure ends this rank with a message
        logger.error("rank %d failed: %s: %s", args.rank, type(e).__name__, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
