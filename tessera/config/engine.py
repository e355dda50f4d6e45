"""Engine configuration: one frozen dataclass per concern, composed into EngineConfig.

User-facing flags are the field names (CLI: dashes; Python: snake_case kwargs of `LLM(...)`).
`EngineConfig.resolve()` returns a NEW config with "auto" values decided and auto-disable rules
applied, logging each decision and why.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import numbers
import os
from typing import Any

from tessera.config.fields import add_dataclass_args, cfg, check_kwarg, dataclass_kwargs

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "tiny-qwen3"


def _attention_choices() -> list[str]:
    from tessera.attention import ATTENTION_BACKENDS

    return ["auto", *sorted(ATTENTION_BACKENDS)]


def _tool_parser_choices() -> list[str]:
    from tessera.server.tool_parsers import TOOL_PARSERS

    return sorted(TOOL_PARSERS)


def _reasoning_parser_choices() -> list[str]:
    from tessera.server.reasoning import REASONING_PARSERS

    return sorted(REASONING_PARSERS)


def _grammar_choices() -> list[str]:
    from tessera.scheduler.grammar import GRAMMAR_BACKENDS

    return list(GRAMMAR_BACKENDS)


def _sampling_choices() -> list[str]:
    return ["auto", "triton", "torch", "flashinfer"]


@dataclasses.dataclass(frozen=True)
class LoadConfig:
    model_path: str | None = cfg(None, "HF model directory or a preset name "
                                 "(tiny-llama, tiny-qwen3, qwen3-0.6b, llama3-8b); default tiny-qwen3")
    tokenizer_path: str | None = cfg(None, "tokenizer directory (default: the model path)")
    load_format: str = cfg("auto", "auto: safetensors files (dummy for presets); dummy: random weights",
                           choices=["auto", "safetensors", "dummy"])
    dtype: str = cfg("auto", "auto: bfloat16 on GPUs, float32 on CPU",
                     choices=["auto", "bfloat16", "float16", "float32"])
    device: str = cfg("auto", "auto: the detected platform's device (cuda, musa) else cpu")
    seed: int = cfg(0, "random seed for dummy weights and unseeded sampling")
    context_length: int | None = cfg(None, "max tokens per request (default: the model's)", type_=int)
    served_model_name: str | None = cfg(None, "model name in the API (default: the model path)")


@dataclasses.dataclass(frozen=True)
class CacheConfig:
    kv_cache_tokens: int | None = cfg(None, "KV pool size in tokens (default: from mem_fraction_static)",
                                      type_=int)
    mem_fraction_static: float = cfg(0.85, "fraction of device memory for weights + KV cache "
                                     "(CPU: of available RAM, capped at 1 GiB of KV)")
    disable_radix_cache: bool = cfg(False, "turn off the radix prefix cache")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
    chunked_prefill_size: int = cfg(2048, "max new tokens per extend batch; -1 turns chunking off")
    max_running_requests: int = cfg(256, "cap on requests running at once")
    max_prefill_tokens: int = cfg(16384, "max tokens prefilled in one batch")
    schedule_policy: str = cfg("fcfs", "queue order: fcfs, or lpm (longest prefix match first)",
                               choices=["fcfs", "lpm"])
    disable_overlap_schedule: bool = cfg(False, "read each step's tokens before scheduling the "
                                         "next (default: the next step is launched first, so "
                                         "host work overlaps the device's; see Engine.step)")


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    attention_backend: str = cfg("auto", "attention kernels", choices=_attention_choices)
    sampling_backend: str = cfg("auto", "sampling ops", choices=_sampling_choices)
    linear_backend: str = cfg("auto", "few-row linear layers (bs=1 decode, LM head, prefills and "
                              "decode batches of <= 16 tokens, <= 32 for o_proj/down_proj): the "
                              "Triton GEMV / stream GEMM or torch's F.linear; auto: triton on "
                              "CUDA with Triton",
                              choices=["auto", "triton", "torch"])
    grammar_backend: str = cfg("xgrammar", "structured output (json_schema / regex / ebnf "
                               "constraints, response_format, forced tool calls); none: such "
                               "requests are refused", choices=_grammar_choices)
    disable_pdl: bool = cfg(False, "no programmatic dependent launch for tessera's Triton "
                            "kernels (on by default where the GPU has it, compute capability "
                            ">= 9.0; see tessera/ops/triton/pdl.py)")


@dataclasses.dataclass(frozen=True)
class GraphConfig:
    disable_cuda_graph: bool = cfg(False, "no decode CUDA graphs")
    cuda_graph_max_bs: int = cfg(256, "largest decode batch captured")
    cuda_graph_bs: list[int] | None = cfg(None, "explicit decode batch sizes to capture",
                                          nargs="+", type_=int)
    disable_piecewise_cuda_graph: bool = cfg(False, "no piecewise CUDA graphs for extend/prefill")
    enforce_piecewise_cuda_graph: bool = cfg(False, "skip the auto-disable rules (on CPU: run the "
                                             "compiled pieces without capture)")
    piecewise_cuda_graph_max_tokens: int | None = cfg(None, "largest token count captured "
                                                      "(default: chunked_prefill_size)", type_=int)
    piecewise_cuda_graph_tokens: list[int] | None = cfg(None, "explicit token counts to capture",
                                                        nargs="+", type_=int)
    piecewise_cuda_graph_compiler: str = cfg("eager", "how pieces are compiled",
                                             choices=["eager", "inductor"])
    piecewise_cuda_graph_max_requests: int = cfg(
        4, "extend batches of at most this many requests replay one whole-forward graph per "
        "size (the pieces with attention inside) where the attention backend allows it; larger "
        "batches replay the pieces (0: pieces only)", type_=int)


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    tp_size: int = cfg(1, "tensor parallel size")
    moe_dense_tp_size: int | None = cfg(None, "TP size of dense layers in MoE models "
                                        "(1: attention data-parallel)", type_=int)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = cfg("127.0.0.1", "address to bind (127.0.0.1 unless told otherwise)")
    port: int = cfg(30000, "port to bind")
    log_level: str = cfg("info", "logging level", choices=["debug", "info", "warning", "error"])
    api_key: str | None = cfg(None, "require this bearer token on every route but /health* and "
                               "/metrics")
    chat_template: str | None = cfg(None, "chat template for /v1/chat/completions: a Jinja file, "
                                    "an inline Jinja string, or 'chatml'; default: the "
                                    "tokenizer's own (without one, chat requests are refused)")
    tool_call_parser: str | None = cfg(None, "how tool calls are read from the output",
                                       choices=_tool_parser_choices)
    reasoning_parser: str | None = cfg(None, "split <think> reasoning from the answer",
                                       choices=_reasoning_parser_choices)


def _plain(value: Any) -> Any:
    """pathlib paths -> str, numpy-style integers -> int (what the fields hold)."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        return int(value)
    return value


_CONCERNS = {
    "load": LoadConfig, "cache": CacheConfig, "scheduler": SchedulerConfig,
    "backend": BackendConfig, "graph": GraphConfig, "parallel": ParallelConfig,
    "server": ServerConfig,
}


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    load: LoadConfig = dataclasses.field(default_factory=LoadConfig)
    cache: CacheConfig = dataclasses.field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    backend: BackendConfig = dataclasses.field(default_factory=BackendConfig)
    graph: GraphConfig = dataclasses.field(default_factory=GraphConfig)
    parallel: ParallelConfig = dataclasses.field(default_factory=ParallelConfig)
    server: ServerConfig = dataclasses.field(default_factory=ServerConfig)
    resolved: bool = False

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> EngineConfig:
        """Flat snake_case flags -> composed config. Unknown names are a clear error."""
        known = {f.name for c in _CONCERNS.values() for f in dataclasses.fields(c)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"unknown engine argument(s) {unknown}; known: {sorted(known)}")
        # paths may come as pathlib objects; everything else must have its field's type
        kwargs = {k: _plain(v) for k, v in kwargs.items()}
        for c in _CONCERNS.values():
            for f in dataclasses.fields(c):
                if f.name in kwargs:
                    check_kwarg(f, kwargs[f.name])
        return cls(**{name: c(**dataclass_kwargs(c, kwargs)) for name, c in _CONCERNS.items()})

    @classmethod
    def add_cli_args(cls, parser: argparse.ArgumentParser, server: bool = False) -> None:
        for name, c in _CONCERNS.items():
            if name == "server" and not server:
                continue
            add_dataclass_args(parser, c, f"{name} options")

    @classmethod
    def from_cli(cls, args: argparse.Namespace) -> EngineConfig:
        values = vars(args)
        return cls(**{name: c(**dataclass_kwargs(c, values)) for name, c in _CONCERNS.items()})

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _CONCERNS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def resolve(self) -> EngineConfig:
        from tessera.config.resolve import resolve_engine_config

        return self if self.resolved else resolve_engine_config(self)
