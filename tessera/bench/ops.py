"""Op-layer benchmark: fast ops (Triton / vendor kernels) vs native PyTorch on Llama-3-8B shapes.

    python -m tessera.bench.ops --out ops_bench.json

Times a Llama-3-8B-shaped `LlamaDecoderLayer` (bf16, hidden 4096, 32/8 heads of 128, MLP 14336)
built twice from the same weights: once with the platform's fast ops, once with every op forced
native. Attention is replaced by a copy of q into its output, so the numbers isolate what the op
layer changes (norms, rotary, activation) next to the GEMMs that dominate a layer. Each layer is
timed eagerly (per-op launch overhead included, as the piecewise compiler's default `eager` pieces
run) and as a replayed device graph (how the engine runs it). Each op is also timed alone.
Median of device-event timings after warm-up; one timing covers `inner` back-to-back calls.
`--smoke` shrinks every shape so the script can be checked on a CPU; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import statistics
from collections.abc import Callable
from typing import Any

import torch

from tessera.bench.timing import time_ms
from tessera.config.model import ModelConfig
from tessera.forward.context import set_forward_context
from tessera.layers.activation import SiluAndMul
from tessera.layers.layernorm import RMSNorm
from tessera.layers.quantization.fp8_quant import PerTokenGroupQuantFP8
from tessera.layers.rotary import RotaryEmbedding
from tessera.models.loader import default_dtype
from tessera.ops import native_ops
from tessera.platforms import current_platform

LLAMA3_8B: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 128256,
    "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 1,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
    "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
}
SMOKE = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
         "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 4096}


@dataclasses.dataclass
class Figure:
    name: str          # "layer" or the op's name
    mode: str          # eager | graph
    tokens: int
    fast_ms: float
    native_ms: float

    @property
    def speedup(self) -> float:
        return self.native_ms / self.fast_ms if self.fast_ms > 0 else float("nan")


class CopyAttention:
    """Stands in for the attention backend: out = q. Graph-safe, shape-correct, nearly free."""

    def forward(self, q, k, v, out, layer_id, scaling, forward_batch) -> None:
        out.copy_(q)


def median_ms(fn: Callable[[], Any], warmup: int, repeat: int, inner: int) -> float:
    return statistics.median(time_ms(fn, warmup, repeat, inner))


def as_graph(fn: Callable[[], Any]) -> Callable[[], Any] | None:
    """Capture fn (static inputs) into a device graph; None where the platform has no graphs."""
    platform = current_platform()
    if not platform.supports_full_graph:
        return None
    stream = platform.new_stream()
    with platform.stream_context(stream):  # warm up off the default stream, as capture requires
        fn()
    platform.synchronize()
    graph = platform.graph_class()()
    with platform.graph_context(graph, pool=platform.graph_pool_handle()):
        fn()
    return graph.replay


def build_layers(config: ModelConfig, dtype: torch.dtype, device: torch.device):
    """(fast, native) LlamaDecoderLayer with identical random weights."""
    from tessera.models.llama import LlamaDecoderLayer

    with torch.device(device), default_dtype(dtype):
        fast = LlamaDecoderLayer(config, 0, dtype)
        with native_ops():
            native = LlamaDecoderLayer(config, 0, dtype)
    with torch.no_grad():
        for name, param in fast.named_parameters():
            if name.endswith("norm.weight"):
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)
    native.load_state_dict(fast.state_dict())
    return fast, native


def bench_layer(config: ModelConfig, dtype: torch.dtype, device: torch.device,
                token_counts: list[int], args: argparse.Namespace) -> tuple[list[Figure], dict]:
    fast, native = build_layers(config, dtype, device)
    figures, max_rel_diff = [], {}
    with set_forward_context(None, CopyAttention()), torch.inference_mode():  # type: ignore[arg-type]
        for tokens in token_counts:
            positions = torch.arange(tokens, device=device) + 17
            hidden = torch.randn(tokens, config.hidden_size, device=device, dtype=dtype)
            residual = torch.randn_like(hidden)
            out_fast = fast(positions, hidden, residual)[0]
            out_native = native(positions, hidden, residual)[0]
            max_rel_diff[tokens] = ((out_fast.float() - out_native.float()).norm()
                                    / out_native.float().norm()).item()
            runs = {name: functools.partial(layer, positions, hidden, residual)
                    for name, layer in (("fast", fast), ("native", native))}
            times = {name: median_ms(fn, args.warmup, args.repeat, args.inner)
                     for name, fn in runs.items()}
            figures.append(Figure("layer", "eager", tokens, times["fast"], times["native"]))
            graphs = {name: as_graph(fn) for name, fn in runs.items()}
            if all(graphs.values()):
                times = {name: median_ms(fn, args.warmup, args.repeat, args.inner)
                         for name, fn in graphs.items()}
                figures.append(Figure("layer", "graph", tokens, times["fast"], times["native"]))
    return figures, max_rel_diff


def op_cases(config: ModelConfig, tokens: int, dtype: torch.dtype,
             device: torch.device) -> dict[str, tuple[Callable[[bool], Any], tuple]]:
    """name -> (op factory taking force_native, inputs)."""
    hidden, head_dim = config.hidden_size, config.head_dim
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    x = torch.randn(tokens, hidden, device=device, dtype=dtype)
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * head_dim, device=device, dtype=dtype)
    q = qkv[:, : heads * head_dim].view(tokens, heads, head_dim)
    k = qkv[:, heads * head_dim: (heads + kv_heads) * head_dim].view(tokens, kv_heads, head_dim)
    positions = torch.randint(0, config.max_position_embeddings, (tokens,), device=device)

    def norm(force_native: bool) -> RMSNorm:
        return RMSNorm(hidden, config.rms_norm_eps, force_native=force_native).to(device, dtype)

    def rope(force_native: bool) -> RotaryEmbedding:
        return RotaryEmbedding(head_dim, config.max_position_embeddings, config.rope_theta,
                               config.rope_scaling, force_native=force_native).to(device)

    return {
        "rms_norm": (norm, (x,)),
        "fused_add_rms_norm": (norm, (x, torch.randn_like(x))),
        "silu_and_mul": (lambda fn: SiluAndMul(force_native=fn),
                         (torch.randn(tokens, 2 * config.intermediate_size, device=device,
                                      dtype=dtype),)),
        "rotary_embedding": (rope, (positions, q, k)),
        "fp8_group_quant": (lambda fn: PerTokenGroupQuantFP8(128 if hidden % 128 == 0 else 16,
                                                             force_native=fn), (x,)),
    }


def bench_ops(config: ModelConfig, dtype: torch.dtype, device: torch.device,
              token_counts: list[int], args: argparse.Namespace) -> list[Figure]:
    figures = []
    with torch.inference_mode():
        for tokens in token_counts:
            for name, (factory, inputs) in op_cases(config, tokens, dtype, device).items():
                fast, native = factory(False), factory(True)
                times = [median_ms(functools.partial(op, *inputs), args.warmup, args.repeat,
                                   args.inner * 4) for op in (fast, native)]
                figures.append(Figure(name, "eager", tokens, times[0], times[1]))
    return figures


def print_table(figures: list[Figure]) -> None:
    print(f"{'what':<20} {'mode':<6} {'tokens':>6} {'fast ms':>10} {'native ms':>10} "
          f"{'speedup':>8}")
    for f in figures:
        print(f"{f.name:<20} {f.mode:<6} {f.tokens:>6} {f.fast_ms:>10.4f} {f.native_ms:>10.4f} "
              f"{f.speedup:>7.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="where to write the JSON results")
    parser.add_argument("--tokens", type=int, nargs="+", default=[1, 16, 256, 2048])
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--inner", type=int, default=5, help="calls per timing (ops: 4x this)")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes; checks the script")
    args = parser.parse_args(argv)

    platform = current_platform()
    if platform.device_type == "cpu" and not args.smoke:
        raise SystemExit("tessera.bench.ops needs a GPU (CUDA or MUSA); use --smoke on a CPU")
    config = ModelConfig.from_hf_dict({**LLAMA3_8B, **(SMOKE if args.smoke else {})})
    dtype = torch.bfloat16 if platform.device_type != "cpu" else torch.float32
    device = platform.device(0)
    if args.smoke:
        args.tokens, args.warmup, args.repeat, args.inner = [1, 8], 1, 2, 1
    platform.manual_seed(0)

    layer_figures, layer_diff = bench_layer(config, dtype, device, args.tokens, args)
    op_figures = bench_ops(config, dtype, device, args.tokens, args)
    figures = layer_figures + op_figures
    print_table(figures)
    result = {
        "device": platform.device_name(0), "platform": platform.kind.value,
        "torch": torch.__version__, "dtype": str(dtype), "smoke": args.smoke,
        "config": {k: v for k, v in dataclasses.asdict(config).items()
                   if k not in ("hf_config", "dtype")},
        "attention": "replaced by out.copy_(q) (isolates the op layer)",
        "layer_fast_vs_native_rel_diff": layer_diff,
        "figures": [{**dataclasses.asdict(f), "speedup": f.speedup} for f in figures],
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
