"""Which token counts the piecewise CUDA graph captures.

Every extend batch is padded up to the smallest captured size >= its token count, so the list
trades padding waste against capture time (one graph per piece per size; the memory is shared).

The default list:

* 2, 4, then steps of 4 up to 32. The smallest graph is 2 tokens (`MIN_TOKENS`): the backbone is
  traced once for every count >= 2 (Dynamo specialises sizes 0 and 1), and a one-token batch pads
  to 2, which costs nothing measurable. Small extend batches are common in serving (a few decoding
  requests mixed with a short chunk, short prompts) and their graphs are cheap to capture. Below
  ~190 tokens an H200 forward is weight-bandwidth bound (795 TFLOP/s / 4.26 TB/s), so padding there
  costs little GPU time; the fine steps mostly keep elementwise work and attention rows honest.
* Above 32: four sizes per octave (40, 48, 56, 64, 80, 96, ...; 1.25x, 1.2x, 1.17x, 1.14x steps),
  which bounds the padding waste at 25% where the forward is compute bound and the waste is real,
  with a size count that grows only logarithmically: 33 sizes up to 2048, 37 up to 4096.
* The maximum itself (default: the chunked-prefill size) is always captured: full chunks of a long
  prompt are exactly that size and must not pad.

With `--moe-dense-tp-size 1` under TP the tokens are reduce-scattered over the attention-TP group
inside the forward (tessera.layers.communicator), which the compiled pieces and the decode graphs
do without padding: every captured token count and decode batch size must be a multiple of
`token_multiple(parallel)`. `capture_sizes` and the decode graphs' batch sizes
(tessera.runner.cuda_graph_runner) keep only those, and say clearly when none is left.
"""
from __future__ import annotations

from tessera.config.engine import GraphConfig, ParallelConfig

MIN_TOKENS = 2         # smallest token count the one trace serves
FINE_STEP_LIMIT = 32   # up to here: 2, 4, then steps of 4
STEPS_PER_OCTAVE = 4   # above it
# The multiples rule below. Not a flag: tests turn it off to show the failure it prevents (a
# graph size that is not a multiple reaches the reduce-scatter of a scattered layer).
KEEP_SCATTER_MULTIPLES = True


def default_capture_sizes(max_tokens: int) -> list[int]:
    """The default list clipped to `max_tokens`, with `max_tokens` itself always included."""
    if max_tokens < 1:
        raise ValueError(f"--piecewise-cuda-graph-max-tokens must be >= 1, got {max_tokens}")
    sizes = [MIN_TOKENS, 4, *range(8, FINE_STEP_LIMIT + 1, 4)]
    octave = FINE_STEP_LIMIT
    while octave < max_tokens:
        step = octave // STEPS_PER_OCTAVE
        sizes.extend(octave + step * i for i in range(1, STEPS_PER_OCTAVE + 1))
        octave *= 2
    return sorted({s for s in sizes if s <= max_tokens} | {max(max_tokens, MIN_TOKENS)})


def attention_parallel_sizes(parallel: ParallelConfig, attn_dp_size: int = 1,
                             attn_cp_size: int = 1) -> tuple[int, int]:
    """(attn_tp_size, attn_cp_size), as SGLang defines them.

    Attention runs tensor-parallel over tp_size // attn_dp_size ranks (tessera has no DP attention
    yet, so attn_dp_size is 1 and attn_tp_size == tp_size) and context-parallel over attn_cp_size
    (1 until context parallelism exists). `--moe-dense-tp-size` does not change attention's group:
    it says how the dense MLP layers are sharded.
    """
    if parallel.tp_size < 1 or attn_dp_size < 1 or parallel.tp_size % attn_dp_size:
        raise ValueError(f"tp_size {parallel.tp_size} must be a positive multiple of the "
                         f"attention DP size {attn_dp_size}")
    return parallel.tp_size // attn_dp_size, attn_cp_size


def tokens_scattered(parallel: ParallelConfig, attn_dp_size: int = 1) -> bool:
    """True when the token dimension is split across the attention-TP group.

    With `--moe-dense-tp-size 1` the dense MLPs run unsharded on each rank over its own slice of
    the tokens: after attention the hidden states are reduce-scattered over the attention-TP group
    and all-gathered back before the next attention. A reduce-scatter needs the token count to
    divide evenly, so every captured size must too.
    """
    attn_tp, _ = attention_parallel_sizes(parallel, attn_dp_size)
    return parallel.moe_dense_tp_size == 1 and attn_tp > 1


def token_multiple(parallel: ParallelConfig, attn_dp_size: int = 1,
                   attn_cp_size: int = 1) -> int:
    """What every captured token count must be a multiple of: 1 unless tokens are scattered;
    then attn_tp_size, times attn_cp_size when attn_tp_size is not already a multiple of it.
    tessera has no context parallelism, so attn_cp_size is 1 wherever the engine asks."""
    if not tokens_scattered(parallel, attn_dp_size):
        return 1
    attn_tp, attn_cp = attention_parallel_sizes(parallel, attn_dp_size, attn_cp_size)
    return attn_tp if attn_tp % attn_cp == 0 else attn_tp * attn_cp


def keep_multiples(sizes: list[int], multiple: int, what: str, remedy: str) -> list[int]:
    """The sizes that are multiples of `multiple`; a start-up error naming the flag when none
    is (`what`: the kind of size; `remedy`: the flags that would leave one)."""
    if multiple == 1 or not KEEP_SCATTER_MULTIPLES:
        return sizes
    kept = [s for s in sizes if s % multiple == 0]
    if not kept:
        raise ValueError(
            f"no {what} is a multiple of {multiple} among {sizes}: with --moe-dense-tp-size 1 "
            f"the tokens are scattered over the {multiple} attention-TP ranks, so every captured "
            f"size must divide among them; {remedy}, or leave --moe-dense-tp-size unset")
    return kept


def capture_sizes(graph: GraphConfig, parallel: ParallelConfig, attn_dp_size: int = 1,
                  attn_cp_size: int = 1) -> list[int]:
    """Sorted token counts to capture for a resolved config.

    `--piecewise-cuda-graph-tokens` replaces the default list as given (it is not clipped to the
    max, the user asked for those sizes; a 1 becomes MIN_TOKENS); otherwise the default list up to
    `--piecewise-cuda-graph-max-tokens`. When tokens are scattered over the attention-TP group only
    multiples of attn_tp_size (times attn_cp_size when attn_tp_size is not already a multiple of
    it) are kept.
    """
    if graph.piecewise_cuda_graph_tokens:
        bad = [s for s in graph.piecewise_cuda_graph_tokens if s < 1]
        if bad:
            raise ValueError(f"--piecewise-cuda-graph-tokens must be positive token counts, got "
                             f"{bad}")
        sizes = sorted({max(s, MIN_TOKENS) for s in graph.piecewise_cuda_graph_tokens})
    else:
        if graph.piecewise_cuda_graph_max_tokens is None:
            raise ValueError("piecewise_cuda_graph_max_tokens is unset: resolve the config first")
        sizes = default_capture_sizes(graph.piecewise_cuda_graph_max_tokens)
    multiple = token_multiple(parallel, attn_dp_size, attn_cp_size)
    return keep_multiples(
        sizes, multiple, "piecewise CUDA graph size",
        f"pass --piecewise-cuda-graph-tokens with multiples of {multiple}, raise "
        f"--piecewise-cuda-graph-max-tokens, or --disable-piecewise-cuda-graph")


__all__ = ["KEEP_SCATTER_MULTIPLES", "MIN_TOKENS", "attention_parallel_sizes", "capture_sizes",
           "default_capture_sizes", "keep_multiples", "token_multiple", "tokens_scattered"]
