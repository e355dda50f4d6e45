"""The torch reference for the sampling ops: sort-based, plain, runs on any device.

Every filter reduces to one boundary value per row: a token is kept iff prob >= boundary (and
prob > 0). Deciding filters on values, never on sort positions, is what makes ties behave the same
here and in the sorting-free Triton kernels:

- top_k: boundary = the k-th largest prob. Tokens tied with it are all kept, so more than k tokens
  can survive when there are ties at the boundary. top_k <= 0 or >= vocab: no filtering.
- top_p: keep token i iff the mass of tokens with prob strictly greater than p_i is < top_p * mass
  (mass = the row total, or the top-k set's mass for "top_k_first"). This is the smallest set of
  most likely tokens whose sum reaches top_p, plus anything tied with its least likely member
  (FlashInfer's pivot rule). top_p >= 1: no filtering; top_p <= 0 keeps the most likely token(s).
- min_p: boundary = min_p * max prob.
- "top_k_first": top-k, renormalize, then top-p on the renormalized probs. "joint": both filters on
  the original probs (the intersection of the two kept sets). "min_p_first" (vLLM's order, only for
  filtered_sampling_from_probs): min-p and top-k, renormalize, then top-p. Otherwise min-p is
  measured against the max and never changes what top-p counts.

Inputs need not sum to 1; they are treated as weights. The sample is drawn by inverse CDF with one
uniform per row from common.counter_uniforms, so seeds behave as in the Triton backend (same seed,
same sample; a row's sample does not depend on its batch) though the two backends draw different
tokens for the same seed.
"""
from __future__ import annotations

import torch

from tessera.sampling.ops.common import (
    SamplingBackend,
    batch_size,
    counter_uniforms,
    output_dtype,
    resolve_randomness,
    row_param,
)


def _expand(param: torch.Tensor, rows: int) -> torch.Tensor:
    return param.expand(rows) if param.numel() == 1 else param


def top_k_boundary(sorted_desc: torch.Tensor, top_k: torch.Tensor) -> torch.Tensor:
    """Per-row boundary for top-k on descending-sorted rows (0 where top-k is off)."""
    vocab = sorted_desc.shape[1]
    k = _expand(top_k, sorted_desc.shape[0]).long()
    active = (k > 0) & (k < vocab)
    kth = sorted_desc.gather(1, (k.clamp(1, vocab) - 1)[:, None]).squeeze(1)
    return torch.where(active, kth, torch.zeros_like(kth))


def top_p_boundary(sorted_desc: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row boundary for top-p on descending-sorted nonnegative rows (0 where top-p is off)."""
    top_p = _expand(top_p, sorted_desc.shape[0]).double()
    s = sorted_desc.double()
    mass = s.sum(1)
    above = s.cumsum(1) - s  # mass of the tokens before each position in sorted order
    # Kept positions form a prefix; within a run of ties only the first one's `above` is the mass
    # strictly greater than the tie value, and a value-based boundary then keeps the whole run.
    kept = above < (top_p * mass)[:, None]
    kept[:, 0] = True
    last = kept.sum(1) - 1
    boundary = sorted_desc.gather(1, last[:, None]).squeeze(1)
    return torch.where(top_p < 1, boundary, torch.zeros_like(boundary))


def boundaries(probs: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None,
               min_p: torch.Tensor | None, order: str) -> torch.Tensor:
    """The per-row keep boundary combining all requested filters (float32 rows)."""
    sorted_desc = probs.sort(dim=1, descending=True).values
    bound = torch.zeros(probs.shape[0], dtype=probs.dtype, device=probs.device)
    if top_k is not None:
        bound = torch.maximum(bound, top_k_boundary(sorted_desc, top_k))
    if min_p is not None:
        # a cut relative to the max: the same before or after renormalizing
        mp = _expand(min_p, probs.shape[0]).to(probs.dtype)
        min_p_bound = mp * sorted_desc[:, 0]
        if order == "min_p_first":
            bound = torch.maximum(bound, min_p_bound)
    if top_p is not None:
        if order != "joint":
            # Zeroing what the earlier filters dropped keeps the order descending, and
            # top_p_boundary measures top_p against the row's remaining mass: top-p after
            # renormalizing.
            sorted_desc = torch.where(sorted_desc >= bound[:, None], sorted_desc, 0.0)
        bound = torch.maximum(bound, top_p_boundary(sorted_desc, top_p))
    if min_p is not None:
        bound = torch.maximum(bound, min_p_bound)
    return bound


def keep_mask(probs: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
    return (probs >= bound[:, None]) & (probs > 0)


def sample_from_kept(probs: torch.Tensor, keep: torch.Tensor, u: torch.Tensor,
                     indices: torch.Tensor | None = None) -> torch.Tensor:
    """Inverse-CDF sample for each output row (row indices[i] of probs, or row i) restricted to
    keep, with uniforms u in (0, 1). Distinct rows are laid end to end on one increasing axis, so
    many outputs drawing from one row (indices) cost one searchsorted, not a copy of the row each.
    """
    rows, vocab = probs.shape
    src = torch.arange(rows, device=probs.device) if indices is None else indices.long()
    cdf = torch.where(keep, probs, 0.0).double().cumsum(1)
    total = cdf[:, -1]
    base = torch.cumsum(total + 1.0, 0) - (total + 1.0)  # row r's CDF starts at base[r]
    flat = (cdf + base[:, None]).flatten()
    target = base[src] + u * total[src]
    idx = torch.searchsorted(flat, target, right=True) - src * vocab
    # rounding can push the target past the row's last kept token: clamp to it
    cols = torch.arange(vocab, device=probs.device)
    last_kept = torch.where(keep, cols, -1).max(1).values.clamp_min(0)
    return torch.minimum(idx.clamp_min(0), last_kept[src])


class TorchSamplingBackend(SamplingBackend):
    name = "torch"

    def sample(self, probs, *, indices, top_k, top_p, min_p, filter_apply_order, generator,
               seed, offset):
        batch = batch_size(probs, indices)
        device = probs.device
        k = row_param(top_k, batch, device, torch.int64, "top_k")
        p = row_param(top_p, batch, device, torch.float32, "top_p")
        mp = row_param(min_p, batch, device, torch.float32, "min_p")
        rows = probs.float()
        if indices is not None and any(t is not None and t.numel() > 1 for t in (k, p, mp)):
            # per-output parameters: each output needs its own copy of its row
            rows, indices_for_rows = rows[indices.long()], None
        else:
            indices_for_rows = indices  # filters depend on the probs row only
        bound = boundaries(rows, k, p, mp, filter_apply_order)
        u = counter_uniforms(resolve_randomness(seed, offset, generator, device, batch), batch)
        out = sample_from_kept(rows, keep_mask(rows, bound), u, indices_for_rows)
        return out.to(output_dtype(indices))

    def top_k_renorm_probs(self, probs, top_k):
        x = probs.float()
        k = row_param(top_k, x.shape[0], x.device, torch.int64, "top_k")
        bound = top_k_boundary(x.sort(dim=1, descending=True).values, k)
        kept = torch.where(keep_mask(x, bound), x, 0.0)
        return (kept / kept.sum(1, keepdim=True)).to(probs.dtype)

    def top_p_renorm_probs(self, probs, top_p):
        x = probs.float()
        p = row_param(top_p, x.shape[0], x.device, torch.float32, "top_p")
        bound = top_p_boundary(x.sort(dim=1, descending=True).values, p)
        kept = torch.where(keep_mask(x, bound), x, 0.0)
        return kept / kept.sum(1, keepdim=True)

    def top_k_mask_logits(self, logits, top_k):
        x = logits.float()
        vocab = x.shape[1]
        k = _expand(row_param(top_k, x.shape[0], x.device, torch.int64, "top_k"), x.shape[0])
        active = (k > 0) & (k < vocab)
        kth = x.sort(dim=1, descending=True).values.gather(
            1, (k.clamp(1, vocab) - 1)[:, None])
        keep = (x >= kth) | ~active[:, None]
        return torch.where(keep, x, -torch.inf).to(logits.dtype)
