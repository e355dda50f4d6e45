"""Block sizes of the fused-MoE kernels per shape.

`configs/fused_moe_E{E}_N{N}.json` (E experts, N = this rank's intermediate size per expert)
maps a token count to a `MoEKernelConfig`; a call takes the entry of the nearest token count.
Shapes without a file get `default_moe_config`. The shipped files are starting points for the
real models' shapes (Qwen3-30B-A3B at tp 1/2, Mixtral-8x7B at tp 1/2), not measured ones: few
tokens per expert (decode) want a small BLOCK_M, since every block is padded to BLOCK_M rows;
prefill wants larger tiles. Replace them with tuned values: `PART=tune SHAPE=... bash
scripts/gpu/moe.sh` (scripts/gpu/moe_tune.py) writes such a table from CUDA-graph timings.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")


@dataclasses.dataclass(frozen=True)
class MoEKernelConfig:
    block_m: int = 64
    block_n: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3

    def __post_init__(self) -> None:
        for name in ("block_m", "block_n", "block_k"):
            value = getattr(self, name)
            # tl.dot needs every tile dim >= 16, and tl.arange powers of two
            assert value >= 16 and value & (value - 1) == 0, f"{name}={value}"


def default_moe_config(num_tokens: int, num_experts: int, top_k: int) -> MoEKernelConfig:
    """Rows per expert on average decide BLOCK_M: a decode batch gives most experts one or two
    rows, so 16-row blocks waste the least padding."""
    rows_per_expert = num_tokens * top_k / max(1, num_experts)
    if rows_per_expert <= 16:
        return MoEKernelConfig(block_m=16, block_n=64, block_k=64, num_warps=4, num_stages=4)
    if rows_per_expert <= 64:
        return MoEKernelConfig(block_m=32, block_n=64, block_k=64, num_warps=4, num_stages=4)
    return MoEKernelConfig(block_m=64, block_n=128, block_k=64, num_warps=8, num_stages=3)


@functools.cache
def load_moe_table(num_experts: int, inter: int) -> dict[int, MoEKernelConfig] | None:
    path = os.path.join(_CONFIG_DIR, f"fused_moe_E{num_experts}_N{inter}.json")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        raw = json.load(f)
    return {int(tokens): MoEKernelConfig(**entry) for tokens, entry in raw.items()}


def get_moe_config(num_tokens: int, num_experts: int, inter: int, hidden: int,
                   top_k: int) -> MoEKernelConfig:
    """The table's entry for the nearest token count, else the default. `hidden` is not a key
    yet: every shipped shape has one hidden size per (E, N)."""
    table = load_moe_table(num_experts, inter)
    if not table:
        return default_moe_config(num_tokens, num_experts, top_k)
    return table[min(table, key=lambda tokens: abs(tokens - num_tokens))]


__all__ = ["MoEKernelConfig", "default_moe_config", "get_moe_config", "load_moe_table"]
