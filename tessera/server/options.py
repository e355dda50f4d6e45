"""Server flags checked and resolved before anything slow starts: bad values are one clear line."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping

from tessera.config.engine import ServerConfig

API_KEY_ENV = "TESSERA_API_KEY"
# scheme://host[:port], what a browser sends in its Origin header (no path, no trailing slash)
_ORIGIN = re.compile(r"^https?://[^/\s:]+(:\d{1,5})?$")


def resolve_server_config(server: ServerConfig, environ: Mapping[str, str] | None = None
                          ) -> ServerConfig:
    """A new ServerConfig with the API key taken from --api-key, --api-key-file or
    TESSERA_API_KEY (in that order); raises ValueError naming the flag for any bad value."""
    environ = os.environ if environ is None else environ
    if not 0 <= server.port <= 65535:
        raise ValueError(f"--port must be in 0..65535 (0: any free port), got {server.port}")
    _check_seconds("--shutdown-timeout", server.shutdown_timeout, allow_zero=True)
    _check_seconds("--engine-stall-timeout", server.engine_stall_timeout)
    _check_seconds("--timeout-keep-alive", server.timeout_keep_alive)
    if server.tokenizer_workers < 1:
        raise ValueError(f"--tokenizer-workers must be at least 1, got {server.tokenizer_workers}")
    for origin in server.allowed_origins or []:
        if origin != "*" and not _ORIGIN.match(origin):
            raise ValueError(f"--allowed-origins: {origin!r} is not an origin; write it as a "
                             "browser sends it, scheme://host[:port] (e.g. https://app.example.com)"
                             ", or '*' for any")
    return dataclasses.replace(server, api_key=_api_key(server, environ), api_key_file=None)


def _check_seconds(flag: str, value: float, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{flag} must be a number of seconds {'>= 0' if allow_zero else '> 0'}, "
                         f"got {value}")


def _api_key(server: ServerConfig, environ: Mapping[str, str]) -> str | None:
    if server.api_key is not None and server.api_key_file is not None:
        raise ValueError("give the API key once: --api-key or --api-key-file, not both")
    if server.api_key is not None:
        key, source = server.api_key, "--api-key"
    elif server.api_key_file is not None:
        source = f"--api-key-file {server.api_key_file}"
        try:
            with open(server.api_key_file, encoding="utf-8") as f:
                key = f.readline()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{source}: cannot read it ({e})") from None
    elif API_KEY_ENV in environ:
        key, source = environ[API_KEY_ENV], API_KEY_ENV
    else:
        return None
    key = key.strip()
    if not key:
        raise ValueError(f"{source}: the API key is empty")
    if not key.isprintable() or " " in key:
        raise ValueError(f"{source}: the API key must be printable characters without spaces")
    return key
