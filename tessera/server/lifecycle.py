"""How the HTTP server stops and how it treats idle connections (uvicorn, specialised).

Stopping: the first SIGTERM/SIGINT stops accepting connections and lets running requests finish
for at most `shutdown_timeout` seconds; then every request still running is aborted (clients get
their finish_reason "abort" delta and `[DONE]`) and the server exits. A second signal exits at
once.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
from types import FrameType

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from tessera.server.engine_client import EngineClient

logger = logging.getLogger("tessera.server")

# After the aborts, how long streams get to send their last chunks before connections are dropped.
_ABORT_GRACE_S = 1.0


class IdleTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, whose keep-alive timer also runs while no request has started.

    uvicorn arms the timer only once a response completes, so a connection that never sends a
    request (or stops midway through its headers) would stay open for good.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_idle_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # still waiting for a whole request line + headers: keep counting
        if self.cycle is None or self.cycle.response_complete:
            self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        if self.transport.is_closing():
            return
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
        self.timeout_keep_alive_task = self.loop.call_later(self.timeout_keep_alive,
                                                            self.timeout_keep_alive_handler)


class DrainingServer(uvicorn.Server):
    """uvicorn.Server with a bounded drain on the first signal and an immediate exit on the
    second (uvicorn alone waits for every connection, however long its stream runs)."""

    def __init__(self, config: uvicorn.Config, client: EngineClient,
                 shutdown_timeout: float) -> None:
        super().__init__(config)
        self.client = client
        self.shutdown_timeout = shutdown_timeout
        self.forced = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain: asyncio.Task | None = None

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await super().serve(sockets)
        finally:
            if self._drain is not None:
                self._drain.cancel()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Runs as the signal handler (main thread). Unlike uvicorn's, it records nothing to
        # re-raise after serving: the signal is handled here in full.
        name = signal.Signals(sig).name
        if not self.should_exit:
            self.should_exit = True
            logger.info("%s: no new connections; running requests get up to %.0f s to finish "
                        "(send it again to exit now)", name, self.shutdown_timeout)
            if self._loop is not None:
                self._loop.call_soon_threadsafe(self._start_drain)
            return
        logger.warning("%s again: aborting running requests and exiting now", name)
        self.forced = True
        self.force_exit = True
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._abort_now)

    def _abort_now(self) -> None:
        self.client.abort_all()
        self.client.request_stop()

    def stop_soon(self) -> None:
        """Stop as on a first signal, from the event loop (the engine died): no new connections,
        and the same bound on how long running requests may keep the server up."""
        if not self.should_exit:
            self.should_exit = True
            self._start_drain()

    def _start_drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.create_task(self._abort_after_timeout(), name="drain")

    async def _abort_after_timeout(self) -> None:
        await asyncio.sleep(self.shutdown_timeout)
        aborted = self.client.abort_all()
        # nothing new reaches the engine now (no new connections, none kept alive): let it exit
        # while the streams send their last chunks
        self.client.request_stop()
        if aborted:
            logger.warning("shutdown timeout (%.0f s) reached: aborted %d running request(s)",
                           self.shutdown_timeout, aborted)
        await asyncio.sleep(_ABORT_GRACE_S)
        self.force_exit = True  # a connection that still has not closed is dropped
