"""Messages between the HTTP process and the engine process (pickled over ZMQ).

The HTTP process binds two ipc sockets in a private temp dir: requests flow HTTP -> engine on one
(PUSH/PULL), results flow back on the other. Every message is one of the dataclasses below.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from tessera.engine.engine import StepOutput
from tessera.sampling.params import SamplingParams


@dataclasses.dataclass
class GenerateItem:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams


@dataclasses.dataclass
class AddRequests:
    """All samples of one API request, admitted together or rejected together."""
    batch_id: str
    items: list[GenerateItem]


@dataclasses.dataclass
class AddReply:
    batch_id: str
    error: str | None  # the engine's ValueError message when rejected


@dataclasses.dataclass
class AbortRequests:
    rids: list[str]


@dataclasses.dataclass
class RpcCall:
    """A maintenance call answered between steps: 'stats', 'flush_cache', 'start_profile'
    (args: num_steps) or 'stop_profile'."""
    call_id: int
    method: str
    args: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RpcReply:
    call_id: int
    value: Any = None
    error: str | None = None


@dataclasses.dataclass
class StepOutputs:
    outputs: list[StepOutput]


@dataclasses.dataclass
class Heartbeat:
    """Sent by the engine loop between steps, every HEARTBEAT_INTERVAL_S: the loop is alive."""


@dataclasses.dataclass
class EngineReady:
    """Sent once the model is loaded; tells the HTTP process what it is serving."""
    info: dict[str, Any]


@dataclasses.dataclass
class EngineFailed:
    """Sent when the engine could not start or crashed; the HTTP process reports it and exits."""
    message: str


@dataclasses.dataclass
class Shutdown:
    pass
