"""Launchers for the Triton sampling kernels (the kernels and their algorithm: triton_kernels.py).

Launch shapes are fixed per vocab size, never per batch: the chunking decides which Philox counters
a row uses, so a row's sample for a given seed must not change with the batch it sits in.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import triton

from tessera.sampling.ops import triton_kernels as K
from tessera.sampling.ops.common import (
    Randomness,
    SamplingBackend,
    batch_size,
    output_dtype,
    resolve_randomness,
    row_param,
)


@dataclass(frozen=True)
class KernelConfig:
    """Tunables. `block`/`candidates` change which random numbers a row uses (not the
    distribution); the rest only change speed."""

    block: int = 1024  # vocab chunk per loop iteration of a sampling pass
    search_block: int = 1024  # the same for threshold-search passes
    candidates: int = 4  # NC: candidates drawn per rejection pass
    search_edges: int = 8  # NB: predicate evaluations per search pass
    max_rounds: int = 32  # rejection passes before the argmax fallback
    num_warps: int = 8
    # Loads in flight per row: one program streams a whole row, so without pipelining each chunk
    # would wait out a full memory latency.
    num_stages: int = 4


DEFAULT_CONFIG = KernelConfig()


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _rows_per_program(batch: int, block: int) -> int:
    # The interpreter runs programs one after another in Python, so it pays per op, not per
    # element: tiles of ~64K elements make CPU tests fast. Results do not depend on it.
    if not interpreting():
        return 1
    return max(1, min(1024, triton.next_power_of_2(max(batch, 1)), 65536 // block))


def search_passes(edges: int) -> int:
    """Passes that always settle the threshold search: each one divides the 2**32-wide key
    interval by edges + 1."""
    return math.ceil(32 / math.log2(edges + 1)) + 1


def _block(cfg_block: int, vocab: int) -> int:
    return min(cfg_block, max(16, triton.next_power_of_2(vocab)))


def _check_device(t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not interpreting():
        raise RuntimeError("the triton sampling backend needs tensors on a GPU (or "
                           "TRITON_INTERPRET=1 to run its kernels on the CPU, slowly); "
                           "use backend='torch' on the CPU")


def _param_args(t: torch.Tensor | None, dummy: torch.Tensor) -> tuple[torch.Tensor, int]:
    if t is None:
        return dummy, 0
    return t, (0 if t.numel() == 1 else 1)


def sample(probs: torch.Tensor, indices: torch.Tensor | None, top_k: torch.Tensor | None,
           top_p: torch.Tensor | None, min_p: torch.Tensor | None, order: str,
           rand: Randomness, passes_out: torch.Tensor | None = None,
           cfg: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """Launch sample_kernel. Params are normalized device tensors (length 1 or batch) or None.

    passes_out (int32, batch) receives the rejection passes each row took; negative values mark
    rows that hit the argmax fallback (tests use it to prove the sampler stayed exact).
    """
    _check_device(probs)
    x = probs if probs.dtype == torch.float32 else probs.float()
    x = x if x.stride(1) == 1 else x.contiguous()
    batch = batch_size(probs, indices)
    vocab = x.shape[1]
    out = torch.empty(batch, dtype=output_dtype(indices), device=probs.device)
    if batch == 0:
        return out
    block = _block(cfg.block, vocab)
    rows = _rows_per_program(batch, block)
    k_t, k_s = _param_args(top_k, rand.seed)
    p_t, p_s = _param_args(top_p, rand.seed)
    m_t, m_s = _param_args(min_p, rand.seed)
    seed_s = 0 if rand.seed.numel() == 1 else 1
    off_s = 0 if rand.offset.numel() == 1 else 1
    K.sample_kernel[(triton.cdiv(batch, rows),)](
        x, x.stride(0), batch, out, indices if indices is not None else out,
        k_t, k_s, p_t, p_s, m_t, m_s, rand.seed, seed_s, rand.offset, off_s,
        passes_out if passes_out is not None else out, V=vocab,
        HAS_INDICES=indices is not None, HAS_K=top_k is not None, HAS_P=top_p is not None,
        HAS_MINP=min_p is not None,
        TOP_K_FIRST=order != "joint" and top_k is not None and top_p is not None,
        MIN_P_FIRST=order == "min_p_first",
        PER_ROW_SEED=rand.per_row_seed, WRITE_PASSES=passes_out is not None, ROWS=rows,
        BLOCK=block, NC=cfg.candidates, NB=cfg.search_edges,
        SEARCH_BLOCK=_block(cfg.search_block, vocab), SEARCH_PASSES=search_passes(cfg.search_edges),
        MAX_ROUNDS=cfg.max_rounds, STAGES=cfg.num_stages, num_warps=cfg.num_warps)
    return out


def threshold(x: torch.Tensor, param: torch.Tensor, mode: int, write: int, out_dtype: torch.dtype,
              cfg: KernelConfig = DEFAULT_CONFIG) -> torch.Tensor:
    """Launch threshold_kernel: renormalized probs (write=WRITE_RENORM) or masked logits."""
    _check_device(x)
    src = x if x.dtype == torch.float32 else x.float()
    src = src if src.stride(1) == 1 else src.contiguous()
    batch, vocab = src.shape
    out = torch.empty((batch, vocab), dtype=out_dtype, device=x.device)
    if batch == 0:
        return out
    block = _block(cfg.search_block, vocab)
    rows = _rows_per_program(batch, block)
    other = float("-inf") if write == K.WRITE_MASKED_LOGITS else 0.0
    K.threshold_kernel[(triton.cdiv(batch, rows),)](
        src, src.stride(0), out, out.stride(0), batch, param,
        0 if param.numel() == 1 else 1, V=vocab, MODE=mode, WRITE=write, OTHER=other, ROWS=rows,
        BLOCK=block, NB=cfg.search_edges, MAX_PASSES=search_passes(cfg.search_edges),
        STAGES=cfg.num_stages, num_warps=cfg.num_warps)
    return out


class TritonSamplingBackend(SamplingBackend):
    name = "triton"

    def __init__(self, cfg: KernelConfig = DEFAULT_CONFIG) -> None:
        self.cfg = cfg

    def sample(self, probs, *, indices, top_k, top_p, min_p, filter_apply_order, generator,
               seed, offset):
        batch = batch_size(probs, indices)
        device = probs.device
        rand = resolve_randomness(seed, offset, generator, device, batch)
        return sample(probs, indices, row_param(top_k, batch, device, torch.int32, "top_k"),
                      row_param(top_p, batch, device, torch.float32, "top_p"),
                      row_param(min_p, batch, device, torch.float32, "min_p"),
                      filter_apply_order, rand, cfg=self.cfg)

    def top_k_renorm_probs(self, probs, top_k):
        k = row_param(top_k, probs.shape[0], probs.device, torch.int32, "top_k")
        return threshold(probs, k, K.SEARCH_TOP_K, K.WRITE_RENORM, probs.dtype, self.cfg)

    def top_p_renorm_probs(self, probs, top_p):
        p = row_param(top_p, probs.shape[0], probs.device, torch.float32, "top_p")
        return threshold(probs, p, K.SEARCH_TOP_P, K.WRITE_RENORM, torch.float32, self.cfg)

    def top_k_mask_logits(self, logits, top_k):
        k = row_param(top_k, logits.shape[0], logits.device, torch.int32, "top_k")
        return threshold(logits, k, K.SEARCH_TOP_K, K.WRITE_MASKED_LOGITS, logits.dtype, self.cfg)
