"""Starting the tensor-parallel ranks of one node, and watching them.

Node 0's engine process is rank 0 (scheduler, tokenizer, sampling) and starts ranks
1..L-1 (L = tp_size / nnodes) as `python -m tessera.runner.tp_worker` processes; node k > 0
starts ranks k*L..k*L+L-1 and only waits on them (`run_node`). All ranks meet at
`--dist-init-addr` (default: a free port on 127.0.0.1 when there is one node).
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import subprocess
import sys
import time

from tessera.config.engine import EngineConfig
from tessera.models.loader import load_model_config
from tessera.runner.tp_checks import check_tp_divides
from tessera.runner.tp_worker import WorkerArgs

logger = logging.getLogger(__name__)


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_method_of(config: EngineConfig) -> str:
    addr = config.parallel.dist_init_addr
    return f"tcp://{addr}" if addr else f"tcp://127.0.0.1:{_free_loopback_port()}"


def _log_level() -> str:
    return logging.getLevelName(logging.getLogger().getEffectiveLevel()).lower()


class LocalRanks:
    """The rank processes this process started (never rank 0 itself)."""

    def __init__(self, config: EngineConfig, ranks: list[int], init_method: str) -> None:
        self.ranks = ranks
        self.procs: list[subprocess.Popen] = []
        world = config.parallel.tp_size
        for rank in ranks:
            proc = subprocess.Popen([sys.executable, "-m", "tessera.runner.tp_worker"],
                                    stdin=subprocess.PIPE, env=dict(os.environ))
            assert proc.stdin is not None
            proc.stdin.write(pickle.dumps(WorkerArgs(config, rank, world, init_method,
                                                     _log_level())))
            proc.stdin.close()
            self.procs.append(proc)

    def failure(self) -> str | None:
        """A message naming the first rank that has exited, else None."""
        for rank, proc in zip(self.ranks, self.procs):
            code = proc.poll()
            if code is not None:
                return f"tensor-parallel rank {rank} (pid {proc.pid}) exited with code {code}"
        return None

    def wait(self, timeout: float) -> bool:
        """Whether every rank exited within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` for the ranks to leave (after a stop plan), then kill the rest."""
        if not self.wait(timeout):
            for proc in self.procs:
                if proc.poll() is None:
                    logger.warning("killing tensor-parallel rank process %d", proc.pid)
                    proc.kill()
            for proc in self.procs:
                proc.wait()


def local_ranks(config: EngineConfig) -> list[int]:
    parallel = config.parallel
    per_node = parallel.tp_size // parallel.nnodes
    first = parallel.node_rank * per_node
    return list(range(first, first + per_node))


def start_rank_zero(config: EngineConfig) -> LocalRanks:
    """Node 0 with tp > 1: start this node's other ranks, then join the world as rank 0 (this
    process). The model's shapes are checked against the tp size before anything starts."""
    from tessera.distributed import init_distributed
    from tessera.platforms import platform_for_device

    parallel = config.parallel
    check_tp_divides(load_model_config(config.load.model_path), parallel.tp_size)
    init_method = init_method_of(config)
    ranks = LocalRanks(config, local_ranks(config)[1:], init_method)
    backend = platform_for_device(config.load.device).dist_backend
    logger.info("tensor parallel: %d ranks on %d node(s) (%d here, pids %s), backend %s, "
                "rendezvous %s", parallel.tp_size, parallel.nnodes,
                len(ranks.ranks) + 1, [p.pid for p in ranks.procs], backend, init_method)
    try:
        init_distributed(0, parallel.tp_size, parallel.tp_size, backend, init_method,
                         parallel.dist_timeout, parallel.moe_dense_tp_size)
    except BaseException:
        ranks.stop(timeout=0)
        raise
    return ranks


def run_node(config: EngineConfig) -> int:
    """Node k > 0: start this node's ranks and wait for them. Returns 0 once all of them
    stopped cleanly, 1 as soon as one fails (the others are killed)."""
    config = config.resolve()
    check_tp_divides(load_model_config(config.load.model_path), config.parallel.tp_size)
    ranks = LocalRanks(config, local_ranks(config), init_method_of(config))
    logger.info("node %d: ranks %s started (pids %s), rendezvous at %s",
                config.parallel.node_rank, ranks.ranks, [p.pid for p in ranks.procs],
                config.parallel.dist_init_addr)
    try:
        while True:
            if all(p.poll() == 0 for p in ranks.procs):
                logger.info("node %d: every rank stopped", config.parallel.node_rank)
                return 0
            failed = [(r, p) for r, p in zip(ranks.ranks, ranks.procs) if p.poll() not in
                      (None, 0)]
            if failed:
                logger.error("node %d: rank %d exited with code %d; stopping the others",
                             config.parallel.node_rank, failed[0][0], failed[0][1].returncode)
                ranks.stop(timeout=0)
                return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        ranks.stop(timeout=0)
        return 1
