"""`tessera serve`: check the flags, listen on the port, start the engine process and the
tokenizer workers, then serve HTTP with uvicorn until a signal (lifecycle.py) or the engine's death."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import socket
import sys
from typing import NoReturn

from tessera.config.engine import EngineConfig, ServerConfig

logger = logging.getLogger("tessera.server")
# uvicorn's default listen backlog: connections made while the model loads wait in it
_BACKLOG = 2048


def listen_early(argv: list[str]) -> socket.socket | int | None:
    """Listen on the --host/--port of a server command line before the slow imports (torch,
    pulled in by the flag choices) and the parse of every flag: a taken port fails in well under
    a second. Returns the socket, an exit code when the port cannot be had, or None when argv
    does not name a usable port (the full parser then reports it)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--host", default=ServerConfig.host)
    pre.add_argument("--port", default=str(ServerConfig.port))
    pre.add_argument("--log-level", default=ServerConfig.log_level)
    pre.add_argument("--node-rank", default="0")
    pre.add_argument("-h", "--help", action="store_true")
    known, _ = pre.parse_known_args(argv)
    # nodes other than node 0 serve no HTTP (they only run tensor-parallel ranks)
    if (known.help or not known.port.isdigit() or int(known.port) > 65535
            or known.node_rank not in ("0", "")):
        return None  # the full parse and validation report a bad port with its own message
    _setup_logging(known.log_level)
    try:
        return _listen(known.host, int(known.port))
    except (OSError, OverflowError) as e:
        logger.error("cannot listen on %s:%s: %s; pick another --port or --host", known.host,
                     known.port, e)
        return 1


def exit_process(code: int) -> NoReturn:
    """End the server process now with `code`, logs flushed. By the time serve() returns, the
    engine and the tokenizer workers are stopped; the interpreter's own teardown (torch's, a
    second or more on a busy host) would only delay the exit that --shutdown-timeout bounds."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _setup_logging(level: str) -> None:
    level = level.upper() if level.upper() in ("DEBUG", "INFO", "WARNING", "ERROR") else "INFO"
    logging.basicConfig(level=level, format="[%(asctime)s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")


def serve(args: argparse.Namespace, sock: socket.socket | None = None) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code. `sock`: the socket
    listen_early() already listens on (else the port is taken here)."""
    config = EngineConfig.from_cli(args)
    _setup_logging(config.server.log_level)
    if config.parallel.node_rank > 0:  # a node that only runs tensor-parallel ranks: no HTTP
        if sock is not None:
            sock.close()
        from tessera.engine.tp import run_node

        try:
            return run_node(config)
        except (FileNotFoundError, ValueError) as e:
            logger.error("%s", e)
            return 2
    from tessera.server.options import resolve_server_config

    try:
        config = dataclasses.replace(config, server=resolve_server_config(config.server))
    except ValueError as e:
        logger.error("%s", e)
        if sock is not None:
            sock.close()
        return 2
    host, port = config.server.host, config.server.port
    if sock is None:
        try:
            sock = _listen(host, port)
        except (OSError, OverflowError) as e:
            logger.error("cannot listen on %s:%d: %s; pick another --port or --host", host, port,
                         e)
            return 1
    try:
        return asyncio.run(_serve(config, sock))
    finally:
        sock.close()


def _listen(host: str, port: int) -> socket.socket:
    # Bind AND listen before loading the model: two servers started together on one port both
    # bind (SO_REUSEADDR) until one listens, so listening at once is what makes the loser fail.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and without
    # it Nagle + delayed ACKs hold every small response (and SSE chunk) for 40 ms
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


def _log_startup(info: dict, host: str, port: int) -> None:
    graphs = ", ".join(info["graph_runners"]) or "none (eager)"
    logger.info("model %s (%s) on %s, dtype %s, tp %d over %d node(s)", info["model_path"],
                info["architecture"], info["device"], info["dtype"], info["tp_size"],
                info["nnodes"])
    logger.info("attention backend %s, sampling backend %s; graphs: %s",
                info["attention_backend"], info["sampling_backend"], graphs)
    logger.info("KV cache %d tokens, context length %d, max running requests %d, radix cache %s",
                info["kv_cache_tokens"], info["context_length"], info["max_running_requests"],
                "on" if info["radix_cache"] else "off")
    logger.info("serving '%s' on http://%s:%d (OpenAI API under /v1)",
                info["served_model_name"], host, port)


async def _serve(config: EngineConfig, sock: socket.socket) -> int:
    import uvicorn

    from tessera.models.tokenizer import load_tokenizer
    from tessera.server.app import create_app
    from tessera.server.chat_template import ChatTemplate
    from tessera.server.engine_client import EngineClient, EngineStartError
    from tessera.server.lifecycle import DrainingServer, IdleTimeoutH11Protocol
    from tessera.server.prepare import PreparePool, TokenizerSpec, remember_tokenizer
    from tessera.server.state import ServerState

    opts = config.server
    host, port = opts.host, sock.getsockname()[1]  # the port bound (--port 0 picks a free one)
    # the workers start (spawn, imports) while the engine loads its model
    pool = PreparePool(opts.tokenizer_workers)
    try:
        try:
            client = await EngineClient.start(config, opts.log_level)
        except EngineStartError as e:
            logger.error("engine failed to start: %s", e)
            return 1
        info = client.info
        spec = TokenizerSpec(info["tokenizer_path"], info["vocab_size"],
                             tuple(info["eos_token_ids"]), opts.chat_template,
                             opts.tool_call_parser)
        tokenizer = load_tokenizer(spec.path, spec.vocab_size, spec.eos_token_ids)
        try:
            template = ChatTemplate(tokenizer, opts.chat_template)
        except (OSError, ValueError) as e:
            logger.error("%s", e)
            await client.shutdown()
            return 2
        # small bodies are prepared here, with these (the workers load their own)
        remember_tokenizer(spec, tokenizer, template)
        state = ServerState(client, tokenizer, info, pool, spec, api_key=opts.api_key,
                            engine_stall_timeout=opts.engine_stall_timeout,
                            chat_template=template, tool_call_parser=opts.tool_call_parser,
                            reasoning_parser=opts.reasoning_parser)
        debug = opts.log_level == "debug"
        server = DrainingServer(uvicorn.Config(
            create_app(state, opts.allowed_origins), log_level=opts.log_level, access_log=debug,
            http=IdleTimeoutH11Protocol, timeout_keep_alive=opts.timeout_keep_alive,
            lifespan="off"), client, opts.shutdown_timeout)
        exit_code = 0

        def on_engine_death(message: str) -> None:
            nonlocal exit_code
            exit_code = 1
            server.stop_soon()

        client.on_death = on_engine_death
        client.run_background_tasks()
        _log_startup(info, host, port)
        try:
            await server.serve(sockets=[sock])
        finally:
            pool.shutdown()  # its workers exit while the engine does
            await client.shutdown(timeout=2.0 if server.forced else 10.0)
            logger.info("server stopped")
        return exit_code
    finally:
        pool.shutdown()
