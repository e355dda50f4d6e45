"""The HTTP process's handle on the engine process: spawn it, send requests, route deltas.

One task receives every message from the engine and routes each StepOutput to the asyncio queue of
the API request it belongs to; handlers only ever await their own queue.
"""
from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

import zmq
import zmq.asyncio

from tessera.config.engine import EngineConfig
from tessera.engine.engine import StepOutput
from tessera.server.engine_process import run_engine_process
from tessera.server.io_struct import (
    AbortRequests,
    AddReply,
    AddRequests,
    EngineFailed,
    EngineReady,
    GenerateItem,
    Heartbeat,
    RpcCall,
    RpcReply,
    Shutdown,
    StepOutputs,
)
from tessera.server.metrics import ServerMetrics

logger = logging.getLogger(__name__)


class EngineStartError(RuntimeError):
    """The engine process could not start (bad model path, out of memory, ...)."""


class EngineDeadError(RuntimeError):
    """The engine process exited while requests were in flight."""


@dataclasses.dataclass
class RequestStream:
    """The samples of one API request and the queue their deltas arrive on."""
    group_id: str
    rids: list[str]
    queue: asyncio.Queue[StepOutput | EngineDeadError]
    start: float
    unfinished: set[str]
    prompt_lens: dict[str, int]
    last_token_time: dict[str, float] = dataclasses.field(default_factory=dict)
    last_output: dict[str, StepOutput] = dataclasses.field(default_factory=dict)
    first_token_time: dict[str, float] = dataclasses.field(default_factory=dict)

    def abort_output(self, rid: str) -> StepOutput:
        """The final delta of a sample ended here rather than by the engine (at shutdown)."""
        last = self.last_output.get(rid)
        return StepOutput(rid, [], "", True, "abort", self.prompt_lens[rid],
                          last.num_output_tokens if last else 0,
                          last.num_cached_tokens if last else 0)


class EngineClient:
    def __init__(self, proc: mp.process.BaseProcess, ipc_dir: str, ctx: zmq.Context,
                 request_sock: zmq.Socket, output_sock: zmq.asyncio.Socket) -> None:
        self.proc = proc
        self.ipc_dir = ipc_dir
        self.ctx = ctx
        # Sends are plain non-blocking sync calls (unbounded queue), so aborts can be sent from
        # `finally` blocks and cancelled tasks without awaiting.
        self.request_sock = request_sock
        self.output_sock = output_sock
        self.info: dict[str, Any] = {}
        self.metrics: ServerMetrics | None = None
        self.dead: str | None = None
        # when the engine last sent anything (its loop sends a Heartbeat every 0.25 s)
        self.last_heard = time.monotonic()
        self.on_death: Callable[[str], None] | None = None
        self._streams: dict[str, RequestStream] = {}   # rid -> stream
        self._groups: dict[str, RequestStream] = {}    # group id -> stream
        self._add_replies: dict[str, asyncio.Future[str | None]] = {}
        self._rpc_replies: dict[int, asyncio.Future[Any]] = {}
        self._call_ids = itertools.count()
        self._tasks: list[asyncio.Task] = []
        self._stop_sent = False

    # ---- lifecycle ----------------------------------------------------------------------------
    @classmethod
    async def start(cls, config: EngineConfig, log_level: str = "info") -> EngineClient:
        """Spawn the engine process and wait until its model is loaded (or it failed)."""
        ipc_dir = tempfile.mkdtemp(prefix="tessera-ipc-")
        request_path = f"ipc://{os.path.join(ipc_dir, 'requests')}"
        output_path = f"ipc://{os.path.join(ipc_dir, 'outputs')}"
        ctx = zmq.Context()
        request_sock = ctx.socket(zmq.PUSH)
        request_sock.setsockopt(zmq.SNDHWM, 0)
        request_sock.bind(request_path)
        output_sock = zmq.asyncio.Context.shadow(ctx).socket(zmq.PULL)
        output_sock.setsockopt(zmq.RCVHWM, 0)
        output_sock.bind(output_path)
        # Not a daemon: the engine may start processes of its own (one per TP rank). Its stop is
        # explicit (shutdown/close_sync), and it exits by itself when this process disappears.
        proc = mp.get_context("spawn").Process(
            target=run_engine_process,
            args=(config, request_path, output_path, log_level, os.getpid()),
            name="tessera-engine")
        proc.start()
        client = cls(proc, ipc_dir, ctx, request_sock, output_sock)
        try:
            client.info = await client._wait_ready()
        except BaseException:
            client.close_sync()
            raise
        client.metrics = ServerMetrics(client.info["served_model_name"])
        return client

    async def _wait_ready(self) -> dict[str, Any]:
        while True:
            if await self.output_sock.poll(500):
                msg = await self.output_sock.recv_pyobj()
                if isinstance(msg, EngineReady):
                    self.last_heard = time.monotonic()  # the load took long; the engine did not
                    return msg.info
                if isinstance(msg, EngineFailed):
                    raise EngineStartError(msg.message)
                logger.warning("unexpected message before engine ready: %r", type(msg).__name__)
            elif not self.proc.is_alive():
                raise EngineStartError(f"engine process exited with code {self.proc.exitcode} "
                                       "before it was ready (see its log above)")

    def run_background_tasks(self) -> None:
        """Start routing outputs and watching the engine process (inside the serving loop)."""
        self._tasks = [asyncio.create_task(self._recv_loop(), name="engine-recv"),
                       asyncio.create_task(self._watch_process(), name="engine-watch")]

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Ask the engine to exit (it frees its KV with its process), then close the sockets;
        after `timeout` seconds the engine process is terminated."""
        for t in self._tasks:
            t.cancel()
        if self.proc.is_alive():
            self.request_stop()
            await asyncio.to_thread(self.proc.join, timeout)
        if self.dead is None:
            self.dead = "the server is shutting down"  # no more sends on the closed sockets
        self.close_sync()

    def request_stop(self) -> None:
        """Tell the engine to exit after what it has received (aborts included); once only."""
        if not self._stop_sent and self.dead is None:
            self._stop_sent = True
            self._send(Shutdown())

    def close_sync(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
        self.request_sock.close(linger=0)
        self.output_sock.close(linger=0)
        self.ctx.term()
        shutil.rmtree(self.ipc_dir, ignore_errors=True)

    # ---- requests -----------------------------------------------------------------------------
    async def generate(self, group_id: str, items: list[GenerateItem]) -> RequestStream:
        """Submit all samples of one request; raise ValueError if the engine rejects them."""
        if self.dead is not None:
            raise EngineDeadError(self.dead)
        if group_id in self._groups:
            raise ValueError(f"request id {group_id!r} is already in use")
        rids = [it.rid for it in items]
        stream = RequestStream(group_id, rids, asyncio.Queue(), time.perf_counter(), set(rids),
                               {it.rid: len(it.prompt_ids) for it in items})
        # register before sending: the first delta may arrive right behind the reply
        for rid in rids:
            self._streams[rid] = stream
        self._groups[group_id] = stream
        reply = asyncio.get_running_loop().create_future()
        self._add_replies[group_id] = reply
        self._send(AddRequests(group_id, items))
        try:
            error = await reply
        except BaseException:
            self.release(stream)
            raise
        finally:
            self._add_replies.pop(group_id, None)
        if error is not None:
            self._unregister(stream)
            raise ValueError(error)
        return stream

    def release(self, stream: RequestStream) -> None:
        """Done with a request: abort whatever of it still runs and stop routing its deltas.

        Samples still unfinished here were left by their client (a disconnect): they are counted
        as finished with reason "abort", and the request as a client disconnect.
        """
        if stream.unfinished:
            if self.dead is None:
                self._send(AbortRequests(sorted(stream.unfinished)))
            if self.metrics is not None:
                for _ in stream.unfinished:
                    self.metrics.finished("abort")
                self.metrics.client_disconnects.inc()
        stream.unfinished.clear()
        self._unregister(stream)

    def abort_all(self) -> int:
        """End every running sample now with finish_reason "abort" (the engine is told to free
        them; its own abort deltas, arriving later, are dropped). Returns the requests ended:
        shutdown's drain and /abort_request's abort_all both end requests this way."""
        rids = [rid for rid in self._streams if self._streams[rid].unfinished]
        if rids and self.dead is None:
            self._send(AbortRequests(sorted(rids)))
        groups = {self._streams[rid].group_id for rid in rids}
        self._route([self._streams[rid].abort_output(rid) for rid in rids])
        return len(groups)

    def silent_for(self) -> float:
        """Seconds since the engine last sent anything."""
        return time.monotonic() - self.last_heard

    def abort_group(self, group_id: str) -> bool:
        stream = self._groups.get(group_id)
        if stream is None:
            return False
        if stream.unfinished:
            self._send(AbortRequests(sorted(stream.unfinished)))
        return True

    async def call(self, method: str, timeout: float = 30.0, **args: Any) -> Any:
        """A maintenance call (io_struct.RpcCall) answered by the engine between steps."""
        if self.dead is not None:
            raise EngineDeadError(self.dead)
        call_id = next(self._call_ids)
        fut = asyncio.get_running_loop().create_future()
        self._rpc_replies[call_id] = fut
        self._send(RpcCall(call_id, method, args))
        try:
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._rpc_replies.pop(call_id, None)

    def _send(self, msg: object) -> None:
        self.request_sock.send_pyobj(msg, zmq.NOBLOCK)

    def _unregister(self, stream: RequestStream) -> None:
        for rid in stream.rids:
            if self._streams.get(rid) is stream:
                del self._streams[rid]
        if self._groups.get(stream.group_id) is stream:
            del self._groups[stream.group_id]

    # ---- background ---------------------------------------------------------------------------
    async def _recv_loop(self) -> None:
        try:
            while True:
                msg = await self.output_sock.recv_pyobj()
                self.last_heard = time.monotonic()
                if not self._dispatch(msg):
                    return
        except Exception as e:  # without this loop nothing is answered: fail loudly
            logger.exception("receiving from the engine failed")
            self._die(f"lost the engine's output stream: {type(e).__name__}: {e}")

    def _dispatch(self, msg: object) -> bool:
        """Handle one engine message; False once the engine reported its own failure."""
        if isinstance(msg, StepOutputs):
            self._route(msg.outputs)
        elif isinstance(msg, Heartbeat):
            pass  # its arrival time is all it says
        elif isinstance(msg, AddReply):
            fut = self._add_replies.get(msg.batch_id)
            if fut is not None and not fut.done():
                fut.set_result(msg.error)
        elif isinstance(msg, RpcReply):
            fut = self._rpc_replies.get(msg.call_id)
            if fut is not None and not fut.done():
                if msg.error is None:
                    fut.set_result(msg.value)
                else:
                    fut.set_exception(RuntimeError(msg.error))
        elif isinstance(msg, EngineFailed):
            self._die(msg.message)
            return False
        return True

    def _route(self, outputs: list[StepOutput]) -> None:
        now = time.perf_counter()
        m = self.metrics
        for out in outputs:
            stream = self._streams.get(out.rid)
            if stream is None:
                continue  # released (client gone); its abort is on the way
            n_new = len(out.new_token_ids)
            if m is not None and n_new:
                last = stream.last_token_time.get(out.rid)
                if last is None:
                    m.ttft.observe(now - stream.start)
                    m.prompt_tokens.inc(out.num_prompt_tokens)
                    stream.first_token_time[out.rid] = now
                    if out.queue_time is not None:
                        m.queue_time.observe(out.queue_time)
                else:
                    m.itl.observe((now - last) / n_new)
                m.generation_tokens.inc(n_new)
                stream.last_token_time[out.rid] = now
            stream.last_output[out.rid] = out
            if out.finished:
                stream.unfinished.discard(out.rid)
                del self._streams[out.rid]
                if m is not None:
                    m.finished(out.finish_reason)
                    if out.finish_reason != "abort":
                        m.e2e.observe(now - stream.start)
                        first = stream.first_token_time.get(out.rid)
                        if first is not None and out.num_output_tokens > 1:
                            m.tpot.observe((now - first) / (out.num_output_tokens - 1))
            stream.queue.put_nowait(out)

    async def _watch_process(self) -> None:
        while self.proc.is_alive():
            await asyncio.sleep(0.5)
        await asyncio.sleep(0.5)  # give an EngineFailed message in flight the chance to land
        self._die(f"engine process exited with code {self.proc.exitcode}")

    def _die(self, message: str) -> None:
        if self.dead is not None:
            return
        self.dead = message
        logger.error("engine is gone: %s", message)
        err = EngineDeadError(message)
        for fut in [*self._add_replies.values(), *self._rpc_replies.values()]:
            if not fut.done():
                fut.set_exception(err)
        for stream in {id(s): s for s in self._groups.values()}.values():
            stream.queue.put_nowait(err)
        if self.on_death is not None:
            self.on_death(message)
