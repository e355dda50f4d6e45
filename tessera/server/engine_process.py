"""The engine process: receive requests and aborts over ZMQ, step the engine, send deltas back.

It runs in its own process (multiprocessing spawn) so tokenization, JSON and HTTP in the server
process never share a GIL with the scheduler loop.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from typing import Any

import zmq

from tessera.config.engine import EngineConfig
from tessera.server.io_struct import (
    AbortRequests,
    AddReply,
    AddRequests,
    EngineFailed,
    EngineReady,
    Heartbeat,
    RpcCall,
    RpcReply,
    Shutdown,
    StepOutputs,
)

logger = logging.getLogger(__name__)

# How often the engine checks that its parent (the server) is still alive.
_PARENT_CHECK_S = 0.5
# The engine loop sends a Heartbeat this often, between steps (an idle loop wakes up for it): the
# HTTP process's /health counts a longer silence as a stall (--engine-stall-timeout, well above).
HEARTBEAT_INTERVAL_S = 0.25


def engine_info(engine: Any) -> dict[str, Any]:
    """What the HTTP process needs to serve this engine (and what the startup log reports)."""
    cfg = engine.config
    runner = engine.runner
    mc = runner.model_config
    return {
        "model_path": cfg.load.model_path,
        "served_model_name": cfg.load.served_model_name or cfg.load.model_path,
        "tokenizer_path": cfg.load.tokenizer_path or cfg.load.model_path,
        "architecture": mc.architecture,
        "device": cfg.load.device,
        "dtype": cfg.load.dtype,
        "tp_size": cfg.parallel.tp_size,
        "nnodes": cfg.parallel.nnodes,
        "attention_backend": cfg.backend.attention_backend,
        "sampling_backend": cfg.backend.sampling_backend,
        "grammar_backend": "none" if engine.grammar_backend is None else
                           engine.grammar_backend.name,
        # `</think>` as one token (None: constraints cannot start after a model's reasoning)
        "think_end_token_id": engine.think_end_id,
        "kv_cache_tokens": runner.kv_cache_tokens,
        "context_length": engine.context_length,
        "vocab_size": engine.vocab_size,
        "eos_token_ids": sorted(engine.eos_token_ids),
        "generation_defaults": engine.generation_defaults.sampling,
        "max_running_requests": cfg.scheduler.max_running_requests,
        "chunked_prefill_size": cfg.scheduler.chunked_prefill_size,
        "radix_cache": engine.prefix_cache is not None,
        "decode_cuda_graph": not cfg.graph.disable_cuda_graph,
        "piecewise_cuda_graph": not cfg.graph.disable_piecewise_cuda_graph,
        "graph_runners": [type(r).__name__ for r in runner.graph_runners],
    }


def run_engine_process(config: EngineConfig, request_path: str, output_path: str,
                       log_level: str, server_pid: int) -> None:
    """Entry point of the spawned process. Never raises: failures are reported over ZMQ. Exits
    by itself once the server process `server_pid` is gone."""
    # Ctrl-C in a terminal reaches the whole process group; the server process decides when the
    # engine stops (it sends Shutdown), so in-flight work is not torn down mid-step.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level.upper(), format="[%(asctime)s engine %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    ctx = zmq.Context()
    requests = ctx.socket(zmq.PULL)
    requests.connect(request_path)
    outputs = ctx.socket(zmq.PUSH)
    outputs.connect(output_path)
    try:
        from tessera.engine.engine import Engine

        engine = Engine(config)
    except Exception as e:  # noqa: BLE001 - any startup failure is reported, then we exit
        # A bad path or flag is explained by its message; anything else needs the traceback.
        if not isinstance(e, (FileNotFoundError, ValueError)):
            logger.error("engine failed to start:\n%s", traceback.format_exc())
        outputs.send_pyobj(EngineFailed(f"{type(e).__name__}: {e}"))
        _close(ctx, requests, outputs)
        raise SystemExit(1) from None
    outputs.send_pyobj(EngineReady(engine_info(engine)))
    try:
        EngineLoop(engine, requests, outputs, server_pid).run()
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - a crash ends serving; tell the server why
        logger.error("engine loop crashed:\n%s", traceback.format_exc())
        outputs.send_pyobj(EngineFailed(f"engine crashed: {type(e).__name__}: {e}"))
        engine.shutdown()
        _close(ctx, requests, outputs)
        raise SystemExit(1) from None
    engine.shutdown()
    _close(ctx, requests, outputs)
    if not mp.active_children():
        # The interpreter's teardown (torch, the model and KV pool) takes a second or more, which
        # the server's bounded shutdown waits for; the OS frees all of it at once. (An engine with
        # multiprocessing children of its own exits normally, which joins them.)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _close(ctx: zmq.Context, *sockets: zmq.Socket) -> None:
    for s in sockets:
        s.close(linger=1000)  # let a final EngineFailed reach the server
    ctx.term()


class EngineLoop:
    def __init__(self, engine: Any, requests: zmq.Socket, outputs: zmq.Socket,
                 server_pid: int) -> None:
        self.engine = engine
        self.requests = requests
        self.outputs = outputs
        # given, not os.getppid() here: a server killed while the model loaded would make that
        # init's pid, and the engine would never notice its server is gone
        self.parent_pid = server_pid
        self.running = True

    def run(self) -> None:
        last_parent_check = last_beat = time.monotonic()
        while self.running:
            busy = self.engine.has_unfinished()
            # Busy: take what has arrived and step at once. Idle: block until a message comes or
            # the next heartbeat is due.
            due_ms = (HEARTBEAT_INTERVAL_S - (time.monotonic() - last_beat)) * 1000
            if self.requests.poll(0 if busy else max(1, int(due_ms))):
                self._drain()
            now = time.monotonic()
            if now - last_parent_check > _PARENT_CHECK_S:
                # a server killed without a chance to stop us must not leave us running
                last_parent_check = now
                if os.getppid() != self.parent_pid:
                    logger.warning("server process is gone; engine exits")
                    return
                self.engine.check_ranks()  # a TP rank that died while idle ends serving too
            if now - last_beat >= HEARTBEAT_INTERVAL_S:
                # sent from the loop itself, not a thread: a step that hangs silences it
                self.outputs.send_pyobj(Heartbeat())
                last_beat = now
            if self.running and self.engine.has_unfinished():
                outs = self.engine.step()
                if outs:
                    self.outputs.send_pyobj(StepOutputs(outs))

    def _drain(self) -> None:
        while True:
            try:
                msg = self.requests.recv_pyobj(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._handle(msg)

    def _handle(self, msg: object) -> None:
        if isinstance(msg, AddRequests):
            self.outputs.send_pyobj(AddReply(msg.batch_id, self._add(msg)))
        elif isinstance(msg, AbortRequests):
            for rid in msg.rids:
                self.engine.abort(rid)
        elif isinstance(msg, RpcCall):
            self.outputs.send_pyobj(self._rpc(msg))
        elif isinstance(msg, Shutdown):
            self.running = False
        else:
            logger.error("engine got an unknown message %r", type(msg).__name__)

    def _add(self, msg: AddRequests) -> str | None:
        # Validate every sample first so a request is admitted whole or not at all.
        try:
            for item in msg.items:
                self.engine.validate_prompt(item.prompt_ids, item.params)
            for item in msg.items:
                self.engine.add_request(item.prompt_ids, item.params, rid=item.rid)
        except ValueError as e:
            for item in msg.items:
                self.engine.abort(item.rid)
            return str(e)
        return None

    def _rpc(self, call: RpcCall) -> RpcReply:
        if call.method == "stats":
            return RpcReply(call.call_id, self.engine.stats())
        if call.method == "flush_cache":
            return RpcReply(call.call_id, self.engine.flush_cache())
        if call.method == "start_profile":
            return RpcReply(call.call_id, self.engine.profiler.start(call.args.get("num_steps")))
        if call.method == "stop_profile":
            return RpcReply(call.call_id, self.engine.profiler.stop())
        return RpcReply(call.call_id, error=f"unknown engine call {call.method!r}")
