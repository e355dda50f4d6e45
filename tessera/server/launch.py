"""`tessera serve`: bind the port, start the engine process, then serve HTTP with uvicorn."""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket

from tessera.config.engine import EngineConfig

logger = logging.getLogger("tessera.server")


def serve(args: argparse.Namespace) -> int:
    """Run the server until SIGINT/SIGTERM; returns the process exit code."""
    config = EngineConfig.from_cli(args)
    logging.basicConfig(level=config.server.log_level.upper(),
                        format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    return asyncio.run(_serve(config))


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    return sock


def _log_startup(info: dict, host: str, port: int) -> None:
    graphs = ", ".join(info["graph_runners"]) or "none (eager)"
    logger.info("model %s (%s) on %s, dtype %s", info["model_path"], info["architecture"],
                info["device"], info["dtype"])
    logger.info("attention backend %s, sampling backend %s; graphs: %s",
                info["attention_backend"], info["sampling_backend"], graphs)
    logger.info("KV cache %d tokens, context length %d, max running requests %d, radix cache %s",
                info["kv_cache_tokens"], info["context_length"], info["max_running_requests"],
                "on" if info["radix_cache"] else "off")
    logger.info("serving '%s' on http://%s:%d (OpenAI API under /v1)",
                info["served_model_name"], host, port)


async def _serve(config: EngineConfig) -> int:
    import uvicorn

    from tessera.models.tokenizer import load_tokenizer
    from tessera.server.app import create_app
    from tessera.server.chat_template import ChatTemplate
    from tessera.server.engine_client import EngineClient, EngineStartError
    from tessera.server.state import ServerState

    host, port = config.server.host, config.server.port
    # Bind before loading the model: a busy port should fail in a second, not after minutes.
    if not 0 <= port <= 65535:
        logger.error("--port must be in 0..65535 (0: any free port), got %d", port)
        return 2
    try:
        sock = _bind(host, port)
    except (OSError, OverflowError) as e:
        logger.error("cannot bind %s:%d: %s; pick another --port or --host", host, port, e)
        return 1
    port = sock.getsockname()[1]  # the port actually bound (--port 0 picks a free one)
    try:
        client = await EngineClient.start(config, config.server.log_level)
    except EngineStartError as e:
        logger.error("engine failed to start: %s", e)
        sock.close()
        return 1
    info = client.info
    tokenizer = load_tokenizer(info["tokenizer_path"], info["vocab_size"],
                               tuple(info["eos_token_ids"]))
    try:
        template = ChatTemplate(tokenizer, config.server.chat_template)
    except (OSError, ValueError) as e:
        logger.error("%s", e)
        await client.shutdown()
        sock.close()
        return 2
    state = ServerState(client, tokenizer, info, api_key=config.server.api_key,
                        chat_template=template, tool_call_parser=config.server.tool_call_parser,
                        reasoning_parser=config.server.reasoning_parser)
    debug = config.server.log_level == "debug"
    server = uvicorn.Server(uvicorn.Config(
        create_app(state), log_level=config.server.log_level, access_log=debug,
        timeout_keep_alive=30, lifespan="off"))
    exit_code = 0

    def on_engine_death(message: str) -> None:
        nonlocal exit_code
        exit_code = 1
        server.should_exit = True

    client.on_death = on_engine_death
    client.run_background_tasks()
    _log_startup(info, host, port)
    # uvicorn re-raises the signal that stopped it once it is done; with these handlers in place
    # that is a no-op, so the engine process below is stopped cleanly rather than orphaned.
    previous = {s: signal.signal(s, lambda *_: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        await server.serve(sockets=[sock])
    finally:
        await client.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
        logger.info("server stopped")
    return exit_code
