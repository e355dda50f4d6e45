"""`python -m tessera.launch_server [flags]`: the same server and flags as `tessera serve`."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    # these register their backends / parsers as CLI choices
    import tessera.attention
    import tessera.sampling.ops
    import tessera.scheduler.grammar
    import tessera.server.reasoning
    import tessera.server.tool_parsers  # noqa: F401
    from tessera.config.engine import EngineConfig

    parser = argparse.ArgumentParser(prog="python -m tessera.launch_server",
                                     description="OpenAI-compatible HTTP server")
    EngineConfig.add_cli_args(parser, server=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Serve until stopped; the process exits from here (exit_process) once serving ends."""
    from tessera.server.launch import exit_process, listen_early, serve

    argv = list(sys.argv[1:] if argv is None else argv)
    sock = listen_early(argv)
    if isinstance(sock, int):
        return sock
    exit_process(serve(build_parser().parse_args(argv), sock) or 0)


if __name__ == "__main__":
    sys.exit(main())
