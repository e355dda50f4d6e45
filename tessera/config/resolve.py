"""Decide every "auto" value and apply the auto-disable rules, logging what was chosen and why."""
from __future__ import annotations

import dataclasses
import logging

from tessera.config.engine import DEFAULT_MODEL, EngineConfig
from tessera.platforms import platform_for_device

logger = logging.getLogger(__name__)


def resolve_engine_config(config: EngineConfig) -> EngineConfig:
    load, backend, graph, sched = config.load, config.backend, config.graph, config.scheduler
    from tessera.platforms import current_platform

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
    from tessera.ops.base import triton_available

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

    if sched.chunked_prefill_size == 0 or sched.chunked_prefill_size < -1:
        raise ValueError("--chunked-prefill-size must be a positive token count or -1 (off)")
    if sched.max_running_requests < 1:
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
    if parallel.tp_size < 1 or (parallel.moe_dense_tp_size is not None
                                and parallel.moe_dense_tp_size < 1):
        raise ValueError("--tp-size and --moe-dense-tp-size must be >= 1")

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
    if not disable_pcg:
        from tessera.compilation.capture_sizes import capture_sizes

        # raises a clear error now, not at model load, when no size suits the parallel layout
        capture_sizes(dataclasses.replace(graph, piecewise_cuda_graph_max_tokens=pcg_max),
                      config.parallel)
    graph = dataclasses.replace(graph, disable_cuda_graph=disable_cuda_graph,
                                disable_piecewise_cuda_graph=disable_pcg,
                                piecewise_cuda_graph_max_tokens=pcg_max,
                                piecewise_cuda_graph_compiler=pcg_compiler)
    return dataclasses.replace(config, load=load, backend=backend, graph=graph, resolved=True)
