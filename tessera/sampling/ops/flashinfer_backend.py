"""The FlashInfer sampling kernels behind the common interface (only when flashinfer imports)."""
from __future__ import annotations

import torch

from tessera.sampling.ops.common import SamplingBackend


class FlashInferSamplingBackend(SamplingBackend):
    name = "flashinfer"

    def __init__(self) -> None:
        try:
            import flashinfer.sampling as fs
        except ImportError as e:
            raise RuntimeError("sampling backend 'flashinfer' needs the flashinfer package "
                               f"({e}); install it or choose backend 'triton' or 'torch'") from e
        self._fs = fs

    def sample(self, probs, *, indices, top_k, top_p, min_p, filter_apply_order, generator,
               seed, offset):
        fs = self._fs
        rng = {"generator": generator, **_seed_offset(seed, offset, probs.device)}
        probs = probs.float()
        if min_p is not None and (top_k is not None or top_p is not None):
            # FlashInfer has no fused min_p + other filters. Its renorms work on probs rows, our
            # parameters are per output row: give every output its own row first.
            if indices is not None:
                out = self.sample(probs[indices.long()], indices=None, top_k=top_k, top_p=top_p,
                                  min_p=min_p, filter_apply_order=filter_apply_order,
                                  generator=generator, seed=seed, offset=offset)
                return out.to(indices.dtype)
            if filter_apply_order == "top_k_first":  # SGLang's chain
                if top_k is not None:
                    probs = fs.top_k_renorm_probs(probs, top_k)
                if top_p is not None:
                    probs = fs.top_p_renorm_probs(probs, top_p)
                return fs.min_p_sampling_from_probs(probs, min_p, indices, **rng)
            cut = torch.as_tensor(min_p, dtype=probs.dtype, device=probs.device)
            probs = torch.where(probs >= cut.reshape(-1, 1) * probs.amax(1, keepdim=True),
                                probs, 0.0)
            if filter_apply_order == "min_p_first":  # top-p then counts only what min-p kept
                probs = probs / probs.sum(1, keepdim=True)
                filter_apply_order = "top_k_first"
            # "joint": the cut changes no count or mass above a token that survives it
            min_p = None
        if min_p is not None:
            return fs.min_p_sampling_from_probs(probs, min_p, indices, **rng)
        if top_k is not None and top_p is not None:
            return fs.top_k_top_p_sampling_from_probs(
                probs, top_k, top_p, indices, filter_apply_order=filter_apply_order, **rng)
        if top_k is not None:
            return fs.top_k_sampling_from_probs(probs, top_k, indices, **rng)
        if top_p is not None:
            return fs.top_p_sampling_from_probs(probs, top_p, indices, **rng)
        return fs.sampling_from_probs(probs, indices, **rng)

    def top_k_renorm_probs(self, probs, top_k):
        return self._fs.top_k_renorm_probs(probs, top_k)

    def top_p_renorm_probs(self, probs, top_p):
        return self._fs.top_p_renorm_probs(probs.float(), top_p)

    def top_k_mask_logits(self, logits, top_k):
        return self._fs.top_k_mask_logits(logits, top_k)


def _seed_offset(seed: int | torch.Tensor | None, offset: int | torch.Tensor | None,
                 device: torch.device) -> dict:
    """FlashInfer wants both or neither, both tensors or both ints; our API is more lenient."""
    if seed is None:
        return {"seed": None, "offset": None}
    offset = 0 if offset is None else offset
    if isinstance(seed, torch.Tensor) != isinstance(offset, torch.Tensor):
        seed, offset = (torch.as_tensor(v, dtype=torch.int64, device=device).reshape(-1)
                        for v in (seed, offset))
    if isinstance(seed, torch.Tensor):
        seed, offset = seed.to(device, torch.int64), offset.to(device, torch.int64)
    return {"seed": seed, "offset": offset}
