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
    quantization: str | None = cfg(None, "weight format: fp8 = block FP8 (a checkpoint whose "
                                   "quantization_config says fp8 with weight_block_size, or "
                                   "any 16/32-bit checkpoint quantized to 128x128 blocks while "
                                   "loading); none = unquantized; default: the checkpoint's own",
                                   choices=["none", "fp8"])
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
    chunked_prefill_size: int | None = cfg(None, "max new tokens per extend batch; -1 turns "
                                           "chunking off (default: from the device's memory: "
                                           "8192 at >= 60 GiB, 4096 at >= 24 GiB, else 2048; "
                                           "2048 on CPU)", type_=int)
    max_running_requests: int | None = cfg(None, "cap on requests running at once (default: "
                                           "from the KV pool, one request per 256 of its "
                                           "tokens, at most the largest decode graph batch "
                                           "(--cuda-graph-max-bs) or 256 without decode graphs; "
                                           "see auto_max_running_requests)", type_=int)
    max_prefill_tokens: int = cfg(16384, "max tokens prefilled in one batch")
    init_new_token_ratio: float = cfg(0.7, "share of a running request's remaining output "
                                      "budget admission reserves KV for, at start and after "
                                      "each retraction's reset decays (see "
                                      "tessera.scheduler.admission)")
    min_new_token_ratio: float = cfg(0.1, "lowest that share decays to (the floor learned from "
                                     "finished requests' use of their budget may be higher)")
    new_token_ratio_decay_steps: int = cfg(600, "steps without a retraction over which the "
                                           "share decays from its start to its floor")
    schedule_policy: str = cfg("fcfs", "queue order: fcfs, or lpm (longest prefix match first)",
                               choices=["fcfs", "lpm"])
    disable_overlap_schedule: bool = cfg(False, "read each step's tokens before scheduling the "
                                         "next (default: the next step is launched first, so "
                                         "host work overlaps the device's; see Engine.step)")


@dataclasses.dataclass(frozen=True)
class BackendConfig:
    attention_backend: str = cfg("auto", "attention kernels", choices="attention_backend")
    sampling_backend: str = cfg("auto", "sampling ops", choices="sampling_backend")
    linear_backend: str = cfg("auto", "few-row linear layers (bs=1 decode, LM head, prefills and "
                              "decode batches of <= 16 tokens, <= 32 for o_proj/down_proj): the "
                              "Triton GEMV / stream GEMM or torch's F.linear; auto: triton on "
                              "CUDA with Triton",
                              choices=["auto", "triton", "torch"])
    grammar_backend: str = cfg("xgrammar", "structured output (json_schema / regex / ebnf "
                               "constraints, response_format, forced tool calls); none: such "
                               "requests are refused", choices="grammar_backend")
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
    tp_size: int = cfg(1, "tensor parallel size: one process per rank, each holding 1/tp of "
                       "the weights and KV heads", aliases=["--tp", "--tensor-parallel-size"])
    nnodes: int = cfg(1, "nodes the tp ranks are spread over (tp_size / nnodes ranks each)")
    node_rank: int = cfg(0, "this node's index in 0..nnodes-1; node 0 schedules and serves")
    dist_init_addr: str | None = cfg(None, "host:port of node 0's rendezvous (needed with "
                                     "--nnodes > 1; default: a free port on 127.0.0.1)")
    dist_timeout: float = cfg(60.0, "seconds a start-up or forward collective may wait for "
                              "the other ranks before failing")
    moe_dense_tp_size: int | None = cfg(None, "TP size of the dense MLP layers of MoE models: "
                                        "1 replicates them and scatters the tokens across the "
                                        "attention-TP ranks around them (captured token counts "
                                        "and decode batch sizes then multiples of --tp-size); "
                                        "unset: sharded like the rest", type_=int)


@dataclasses.dataclass(frozen=True)
class ServerConfig:
    host: str = cfg("127.0.0.1", "address to bind (127.0.0.1 unless told otherwise)")
    port: int = cfg(30000, "port to bind")
    log_level: str = cfg("info", "logging level", choices=["debug", "info", "warning", "error"])
    api_key: str | None = cfg(None, "require this bearer token on every route but /health and "
                               "/metrics (also from TESSERA_API_KEY or --api-key-file, which keep "
                               "it out of the process list)")
    api_key_file: str | None = cfg(None, "read the API key from this file (its first line)")
    allowed_origins: list[str] | None = cfg(  # noqa: RUF009 - cfg() makes a dataclasses.field
        None, "browser origins allowed to call the API (CORS), e.g. https://app.example.com; "
        "default: none", nargs="+", type_=str)
    shutdown_timeout: float = cfg(30.0, "on SIGTERM/SIGINT, let running requests finish for at "
                                  "most this many seconds, then abort the rest (a second signal "
                                  "exits at once)")
    engine_stall_timeout: float = cfg(1.5, "/health turns 503 once the engine process has not "
                                      "been heard from for this many seconds (a stuck or stopped "
                                      "step); raise it where one step legitimately takes longer")
    timeout_keep_alive: float = cfg(5.0, "close HTTP connections idle for this many seconds "
                                    "(also fresh connections that never send a request)")
    tokenizer_workers: int = cfg(2, "processes that parse, template and tokenize large request "
                                 "bodies so they never hold up the event loop")
    chat_template: str | None = cfg(None, "chat template for /v1/chat/completions: a Jinja file, "
                                    "an inline Jinja string, or 'chatml'; default: the "
                                    "tokenizer's own (without one, chat requests are refused)")
    tool_call_parser: str | None = cfg(None, "how tool calls are read from the output",
                                       choices="tool_call_parser")
    reasoning_parser: str | None = cfg(None, "split <think> reasoning from the answer",
                                       choices="reasoning_parser")
    profile_dir: str | None = cfg(None, "where POST /start_profile traces are written (default: "
                                  "$TESSERA_PROFILE_DIR or /tmp/tessera-profiles)")


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

    def engine_flat(self) -> dict[str, Any]:
        """flat() without the server's fields: the keyword arguments of `LLM(...)`."""
        server = {f.name for f in dataclasses.fields(ServerConfig)}
        return {k: v for k, v in self.flat().items() if k not in server}

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in _CONCERNS:
            out.update(dataclasses.asdict(getattr(self, name)))
        return out

    def resolve(self) -> EngineConfig:
        return self if self.resolved else resolve_engine_config(self)


def resolve_engine_config(config: EngineConfig) -> EngineConfig:
    """Every "auto" value decided and the auto-disable rules applied, each choice logged with
    its reason (EngineConfig.resolve)."""
    # here, not at module level: building the CLI parser must not import torch
    from tessera.platforms import current_platform, platform_for_device, triton_available

    load, backend, graph, sched = config.load, config.backend, config.graph, config.scheduler
    model_path = load.model_path or DEFAULT_MODEL
    if load.model_path is None:
        logger.info("no model path given: using the built-in preset %s", DEFAULT_MODEL)
    device = current_platform().device_type if load.device == "auto" else load.device
    platform = platform_for_device(device)
    if not platform.is_available():
        raise ValueError(f"--device {device}: no {platform.kind.value} device is available here")
    dtype = load.dtype
    if dtype == "auto":
        dtype = "float32" if platform.device_type == "cpu" else "bfloat16"
        logger.info("dtype auto -> %s on %s", dtype, platform.device_type)
    load = dataclasses.replace(load, model_path=model_path, device=device, dtype=dtype)

    attention = backend.attention_backend
    if attention == "auto":
        attention = platform.default_attention_backend
    sampling = backend.sampling_backend
    if sampling == "auto":
        sampling = platform.default_sampling_backend
    gemv_ok = platform.device_type == "cuda" and platform.supports_triton and triton_available()
    linear = backend.linear_backend
    if linear == "auto":
        linear = "triton" if gemv_ok else "torch"
    elif linear == "triton" and not gemv_ok:
        raise ValueError(f"--linear-backend triton needs a CUDA device with Triton; platform "
                         f"{platform.kind.value} has none (use torch or auto)")
    if backend.disable_pdl:
        pdl = "off (--disable-pdl)"
    elif gemv_ok:
        pdl = "on if the GPU has it (compute capability >= 9.0)"
    else:
        pdl = f"off (no CUDA Triton kernels on {platform.kind.value})"
    logger.info("attention backend: %s; sampling backend: %s; few-row linear: %s; PDL %s",
                attention, sampling, linear, pdl)
    backend = dataclasses.replace(backend, attention_backend=attention, sampling_backend=sampling,
                                  linear_backend=linear)

    if sched.chunked_prefill_size is None:
        chunk, why = auto_chunked_prefill_size(platform)
        logger.info("chunked prefill size auto -> %d (%s)", chunk, why)
        sched = dataclasses.replace(sched, chunked_prefill_size=chunk)
    if sched.chunked_prefill_size == 0 or sched.chunked_prefill_size < -1:
        raise ValueError("--chunked-prefill-size must be a positive token count or -1 (off)")
    if not 0 <= sched.min_new_token_ratio <= sched.init_new_token_ratio <= 1:
        raise ValueError(f"need 0 <= --min-new-token-ratio ({sched.min_new_token_ratio}) <= "
                         f"--init-new-token-ratio ({sched.init_new_token_ratio}) <= 1")
    if sched.new_token_ratio_decay_steps < 1:
        raise ValueError("--new-token-ratio-decay-steps must be >= 1")
    if sched.max_running_requests is not None and sched.max_running_requests < 1:
        raise ValueError("--max-running-requests must be >= 1")
    if sched.max_prefill_tokens < 1:
        raise ValueError("--max-prefill-tokens must be >= 1")
    if load.context_length is not None and load.context_length < 1:
        raise ValueError(f"--context-length must be >= 1 (or left out for the model's), got "
                         f"{load.context_length}")
    if graph.cuda_graph_max_bs < 1:
        raise ValueError("--cuda-graph-max-bs must be >= 1")
    if graph.cuda_graph_bs is not None and min(graph.cuda_graph_bs, default=0) < 1:
        raise ValueError(f"--cuda-graph-bs sizes must be >= 1, got {graph.cuda_graph_bs}")
    parallel = config.parallel
    if parallel.tp_size < 1:
        raise ValueError("--tp-size must be >= 1")
    if parallel.moe_dense_tp_size not in (None, 1):
        raise ValueError(f"--moe-dense-tp-size {parallel.moe_dense_tp_size} is not supported: "
                         f"pass 1 (an MoE model's dense MLP layers replicated on every rank, the "
                         f"tokens scattered across the ranks around them) or leave it unset "
                         f"(dense layers sharded over --tp-size like the rest)")
    if parallel.moe_dense_tp_size == 1:
        logger.info("--moe-dense-tp-size 1 with --tp-size %d: %s", parallel.tp_size,
                    "an MoE model's dense MLP layers are replicated and the tokens scattered "
                    "around them; captured token counts and decode batch sizes are kept to "
                    "multiples of the attention-TP size" if parallel.tp_size > 1
                    else "one rank, nothing to scatter (no effect)")
    if parallel.nnodes < 1 or parallel.tp_size % parallel.nnodes:
        raise ValueError(f"--nnodes {parallel.nnodes} must be >= 1 and divide --tp-size "
                         f"{parallel.tp_size} (each node runs tp_size / nnodes ranks)")
    if not 0 <= parallel.node_rank < parallel.nnodes:
        raise ValueError(f"--node-rank {parallel.node_rank} must be in 0..{parallel.nnodes - 1}")
    if parallel.nnodes > 1 and not parallel.dist_init_addr:
        raise ValueError("--nnodes > 1 needs --dist-init-addr host:port (node 0's address)")
    if parallel.dist_init_addr is not None:
        host, _, port = parallel.dist_init_addr.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--dist-init-addr {parallel.dist_init_addr!r}: expected host:port")
    if parallel.dist_timeout <= 0:
        raise ValueError("--dist-timeout must be > 0 seconds")

    disable_cuda_graph = graph.disable_cuda_graph
    if not disable_cuda_graph and not platform.supports_full_graph:
        logger.info("decode CUDA graph disabled: platform %s has no graphs", platform.kind.value)
        disable_cuda_graph = True
    # ---- piecewise CUDA graph (extend/prefill) ----
    disable_pcg = graph.disable_piecewise_cuda_graph
    pcg_compiler = graph.piecewise_cuda_graph_compiler
    if not disable_pcg and graph.enforce_piecewise_cuda_graph:
        if not platform.supports_piecewise_graph:
            logger.info("piecewise CUDA graph enforced on %s, which has no graphs: the split, "
                        "compiled pieces run without capture", platform.kind.value)
    elif not disable_pcg and not platform.supports_piecewise_graph:
        logger.info("piecewise CUDA graph disabled: platform %s has no graphs (pass "
                    "--enforce-piecewise-cuda-graph to run the compiled pieces anyway)",
                    platform.kind.value)
        disable_pcg = True
    if (not disable_pcg and pcg_compiler == "inductor" and not platform.supports_triton
            and platform.device_type != "cpu"):
        logger.info("piecewise CUDA graph compiler inductor -> eager: inductor needs Triton, "
                    "which platform %s lacks", platform.kind.value)
        pcg_compiler = "eager"
    pcg_max = graph.piecewise_cuda_graph_max_tokens
    if pcg_max is None:
        pcg_max = sched.chunked_prefill_size if sched.chunked_prefill_size > 0 else 4096
    if pcg_max < 1:
        raise ValueError(f"--piecewise-cuda-graph-max-tokens must be >= 1, got {pcg_max}")
    if graph.piecewise_cuda_graph_max_requests < 0:
        raise ValueError(f"--piecewise-cuda-graph-max-requests must be >= 0, got "
                         f"{graph.piecewise_cuda_graph_max_requests}")
    graph = dataclasses.replace(graph, disable_cuda_graph=disable_cuda_graph,
                                disable_piecewise_cuda_graph=disable_pcg,
                                piecewise_cuda_graph_max_tokens=pcg_max,
                                piecewise_cuda_graph_compiler=pcg_compiler)
    return dataclasses.replace(config, load=load, backend=backend, graph=graph, scheduler=sched,
                               resolved=True)


# admitting more requests than the KV pool holds at this many tokens each only has them wait on
# each other's KV (and be retracted)
AUTO_TOKENS_PER_REQUEST = 256


def max_running_requests_cap(sched: SchedulerConfig, graph: GraphConfig) -> int:
    """The most requests that may run at once, before the KV pool is sized: the value given, or
    the ceiling of the automatic choice (the largest decode batch with a graph, so every decode
    step replays one; 256 without decode graphs)."""
    if sched.max_running_requests is not None:
        return sched.max_running_requests
    if graph.disable_cuda_graph:
        return 256
    return max(graph.cuda_graph_bs) if graph.cuda_graph_bs else graph.cuda_graph_max_bs


def auto_max_running_requests(kv_tokens: int, sched: SchedulerConfig,
                              graph: GraphConfig) -> tuple[int, str]:
    """Requests that may run at once when --max-running-requests is not given, and why: one per
    AUTO_TOKENS_PER_REQUEST tokens of the KV pool (a small pool holds few requests; more would
    only be retracted), at most `max_running_requests_cap` (decode batches beyond the largest
    graph would run eagerly, launch-bound)."""
    cap = max_running_requests_cap(sched, graph)
    by_pool = max(1, kv_tokens // AUTO_TOKENS_PER_REQUEST)
    if by_pool < cap:
        return by_pool, (f"KV pool of {kv_tokens} tokens / {AUTO_TOKENS_PER_REQUEST} tokens "
                         f"per request")
    what = "no decode graphs" if graph.disable_cuda_graph else "the largest decode graph batch"
    return cap, f"{what}; the KV pool of {kv_tokens} tokens would allow {by_pool}"


def auto_chunked_prefill_size(platform: Any) -> tuple[int, str]:
    """Tokens per prefill chunk when none is given, and why: larger chunks run prefill's GEMMs
    nearer their peak and take fewer steps, and cost activation memory (and piecewise-graph
    captures up to that size), so they grow with the device's memory."""
    if platform.device_type == "cpu":
        return 2048, "CPU"
    total = platform.mem_get_info()[1]
    gib = total / 2**30
    size = 8192 if gib >= 60 else 4096 if gib >= 24 else 2048
    return size, f"{gib:.0f} GiB of device memory"
