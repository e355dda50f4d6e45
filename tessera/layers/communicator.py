"""LayerCommunicator: where a decoder layer's residual stream lives across the attention-TP group.

With `--moe-dense-tp-size 1` (and an attention-TP group of more than one rank) the dense MLP
layers of an MoE model hold their whole weights on every rank (replicated, TP size 1), and each
rank runs them on its own slice of the tokens instead of all of them:

* after such a layer's attention, its output projection does not all-reduce; the partial sums are
  reduce-scattered over the group, so rank r keeps tokens [r * T/N, (r + 1) * T/N) of the summed
  output (N = attn_tp_size, T the token count padded to a multiple of N); the residual stream is
  sliced to the same rows (or already is), and the add + norm and the dense MLP run on that slice;
* before the next layer's attention, the normed slices are all-gathered (attention needs every
  token and shards heads, not tokens); the residual stream stays scattered;
* before a layer whose MLP needs every token (an MoE block, sharded over the expert
  intermediate dim) the scattered residual stream is all-gathered and the attention output is
  all-reduced as usual, so that layer, and the model's output, are the full stream again.

The last layer's MLP never runs scattered (a dense one runs its replicated weights on every
token), so `forward` and `trunk` (tessera.models.base) end on the full stream and `finish` needs
no communication. All of it costs the same bytes as the all-reduce it replaces: a reduce-scatter
and an all-gather are together one all-reduce.

Token counts. A reduce-scatter needs T to divide by N. Eagerly (Python ints) the communicator
pads the rows it scatters with zeros and drops them after the gather, so any batch works. Under
torch.compile (the piecewise backbone, traced with a dynamic token count) it pads nothing: the
graph runners only ever run token counts that are multiples of N (the capture-size rule,
tessera.compilation.capture_sizes), which keeps padding copies out of the compiled pieces; a
count that is not a multiple there fails in the reduce-scatter with an error saying so.

The communication ops (reduce-scatter, all-gather, all-reduce) are custom ops with fake kernels,
traced into the compiled pieces like the all-reduce of a row-parallel layer; none of them is a
splitting op (see docs/architecture.md, "Tensor parallelism").

A model uses it as LlamaDecoderLayer does (so Llama-style, Qwen3-MoE and DeepSeek layers): one
`layer_communicators(dense_layers)` for the whole model; per layer, the MLP built inside
`comm.mlp_weights()`, `comm.configure_attention_output(self_attn.o_proj)`, then in the forward
`comm.attention(self_attn, ...)` and `comm.mlp_input(...)` between attention and the MLP.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from tessera.distributed import (
    attn_tp_group,
    tensor_parallel_all_gather_tokens,
    tensor_parallel_as,
    tensor_parallel_reduce_scatter,
    tokens_scattered,
)

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class LayerCommunicator:
    """One layer's plan: in which layout its input stream arrives and its MLP runs."""

    layer_id: int
    input_scattered: bool  # the stream (hidden, residual) arrives as this rank's token slice
    mlp_scattered: bool    # the MLP runs on this rank's token slice
    mlp_replicated: bool   # the MLP holds its whole weights (TP size 1) on every rank
    rank: int = 0
    size: int = 1

    @property
    def attention_all_reduces(self) -> bool:
        """Whether the attention's output projection sums over the group itself (a
        RowParallelLinear's reduce_results); False where `mlp_input` reduce-scatters it."""
        return not self.mlp_scattered

    @contextlib.contextmanager
    def mlp_weights(self) -> Iterator[None]:
        """Build the layer's MLP inside: replicated layers see a TP group of one."""
        if not self.mlp_replicated:
            yield
            return
        with tensor_parallel_as(0, 1):
            yield

    def configure_attention_output(self, o_proj: nn.Module) -> None:
        """Leave the sum of the attention's row-parallel output projection to `mlp_input`
        where that reduce-scatters it (its bias would have to be added after the sum)."""
        if self.attention_all_reduces:
            return
        if getattr(o_proj, "bias", None) is not None:
            raise NotImplementedError(f"layer {self.layer_id}: --moe-dense-tp-size 1 with a "
                                      f"biased attention output projection is not supported")
        o_proj.reduce_results = False

    def padded_tokens(self, num_tokens: int) -> int:
        """`num_tokens` rounded up to a multiple of the group size; unchanged under
        torch.compile, where the graph runners guarantee a multiple (see the module doc)."""
        if torch.compiler.is_compiling() or self.size == 1:
            return num_tokens
        return -(-num_tokens // self.size) * self.size

    def _pad(self, x: torch.Tensor, rows: int) -> torch.Tensor:
        if torch.compiler.is_compiling() or x.shape[0] == rows:
            return x
        return F.pad(x, (0, 0) * (x.dim() - 1) + (0, rows - x.shape[0]))

    def _gather(self, x: torch.Tensor, num_tokens: int) -> torch.Tensor:
        full = tensor_parallel_all_gather_tokens(x, self.padded_tokens(num_tokens))
        return full if torch.compiler.is_compiling() else full[:num_tokens]

    def attention(self, block: nn.Module, positions: torch.Tensor, hidden: torch.Tensor,
                  residual: torch.Tensor | None,
                  norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
        """(block(positions, norm(hidden + residual)) over every token, the residual stream in
        this layer's input layout). `block` is the attention block: its `forward_norm` (whose
        fused kernels serve the full layout) when the stream is full; the norm on this rank's
        slice, the normed slices all-gathered, then `block(positions, normed)` when scattered."""
        if not self.input_scattered:
            return block.forward_norm(positions, hidden, residual, norm)
        normed, residual = norm(hidden, residual)
        return block(positions, self._gather(normed, positions.shape[0])), residual

    def mlp_input(self, attn_out: torch.Tensor, residual: torch.Tensor,
                  num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention output, residual stream) in the MLP's layout. `attn_out` is summed over
        the group already when `attention_all_reduces`, this rank's partial sum otherwise."""
        if self.mlp_scattered:
            padded = self.padded_tokens(num_tokens)
            hidden = tensor_parallel_reduce_scatter(self._pad(attn_out, padded))
            if not self.input_scattered:
                rows = hidden.shape[0]
                residual = self._pad(residual, padded).narrow(0, self.rank * rows, rows)
            return hidden, residual
        if self.input_scattered:
            residual = self._gather(residual, num_tokens)
        return attn_out, residual


def layer_communicators(dense_layers: Sequence[bool]) -> list[LayerCommunicator]:
    """One communicator per layer; `dense_layers[i]`: layer i is a dense-MLP layer of an MoE
    model (the layers `--moe-dense-tp-size` is about). Without scattering (the flag unset, or
    one attention-TP rank) every layer keeps the full stream and shards its MLP over TP."""
    scatter = tokens_scattered()
    group = attn_tp_group()
    last = len(dense_layers) - 1
    comms, scattered = [], False
    for i, dense in enumerate(dense_layers):
        mlp_scattered = scatter and dense and i < last
        comms.append(LayerCommunicator(i, scattered, mlp_scattered, scatter and dense,
                                       group.rank, group.size))
        scattered = mlp_scattered
    if scatter:
        dense_ids = [i for i, d in enumerate(dense_layers) if d]
        if dense_ids:
            logger.info("--moe-dense-tp-size 1: dense MLP layers %s replicated on each of %d "
                        "attention-TP ranks; tokens scattered across them around layers %s",
                        dense_ids, group.size, [c.layer_id for c in comms if c.mlp_scattered])
        else:
            logger.info("--moe-dense-tp-size 1: the model has no dense MLP layer in an MoE "
                        "model, so it changes nothing")
    return comms


__all__ = ["LayerCommunicator", "layer_communicators"]
