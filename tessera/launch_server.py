"""`python -m tessera.launch_server [flags]`: the same server and flags as `tessera serve`."""
from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    # these two register their backends as CLI choices
    import tessera.attention
    import tessera.sampling.ops  # noqa: F401
    from tessera.config.engine import EngineConfig

    parser = argparse.ArgumentParser(prog="python -m tessera.launch_server",
                                     description="OpenAI-compatible HTTP server")
    EngineConfig.add_cli_args(parser, server=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    from tessera.server.launch import serve

    return serve(build_parser().parse_args(argv)) or 0


if __name__ == "__main__":
    sys.exit(main())
