"""FlashInfer-compatible sampling ops with a choice of backend.

The functions take FlashInfer's arguments and follow its semantics (see torch_ref.py for the exact
filter rules, ties included), plus `backend=`: None means the active default (set_default_backend;
initially "auto": triton for tensors on an accelerator, torch on the CPU). Backends come from the
SAMPLING_BACKENDS registry of lazy factories; available_backends() lists the usable ones.

- probs: (rows, vocab) nonnegative weights; they need not sum to 1 (top_p is a fraction of the
  row's mass).
- top_k / top_p / min_p: a Python scalar or a tensor with one value per *output* row.
- indices: output row i samples from probs[indices[i]]; the output then has indices' dtype
  (int32 without indices).
- Randomness: `seed`/`offset` (ints or int64 tensors of length 1 or batch, on the probs' device)
  make a call reproducible and CUDA-graph safe: the Triton kernel reads them on the device. With
  a per-row seed tensor, a row's sample depends only on its own seed/offset/probs/parameters, not on
  the rest of the batch. Otherwise one seed is drawn from `generator` (or the device's default
  generator), on the device. Bump `offset` (or the seed) between steps to get fresh numbers.
- `deterministic` is accepted for compatibility; every backend here is deterministic.
- check_nan=True raises ValueError when the input holds a NaN (this reads a flag back to the host).

A batched sampler makes one call per step with per-row device tensors (no host sync, graph safe):

    tokens = filtered_sampling_from_probs(probs, top_k=top_ks, top_p=top_ps, min_p=min_ps,
                                          seed=seeds, offset=steps, filter_apply_order=...)

with neutral values (top_k 0, top_p 1, min_p 0) where a request does not filter. Rows that must draw
independently need different (seed, offset) pairs, e.g. n > 1 samples of one seeded request.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from tessera.config.fields import register_choices
from tessera.sampling.ops.common import (
    FILTER_APPLY_ORDERS,
    FILTERED_ORDERS,
    SamplingBackend,
    check_filter_apply_order,
    check_indices,
    check_probs,
)


def _torch_backend() -> SamplingBackend:
    from tessera.sampling.ops.torch_ref import TorchSamplingBackend

    return TorchSamplingBackend()


def _triton_backend() -> SamplingBackend:
    try:
        from tessera.sampling.ops.triton_backend import TritonSamplingBackend
    except ImportError as e:
        raise RuntimeError(f"sampling backend 'triton' needs the triton package ({e}); "
                           "install it or choose backend 'torch'") from e
    return TritonSamplingBackend()


def _flashinfer_backend() -> SamplingBackend:
    from tessera.sampling.ops.flashinfer_backend import FlashInferSamplingBackend

    return FlashInferSamplingBackend()


SAMPLING_BACKENDS: dict[str, Callable[[], SamplingBackend]] = {
    "torch": _torch_backend,
    "triton": _triton_backend,
    "flashinfer": _flashinfer_backend,
}
_AUTO = "auto"
register_choices("sampling_backend", lambda: [_AUTO, *SAMPLING_BACKENDS])
_default_backend = _AUTO
_instances: dict[str, SamplingBackend] = {}


def available_backends() -> list[str]:
    """Registered backends whose package is importable here (flashinfer only when installed)."""
    needs = {"triton": "triton", "flashinfer": "flashinfer"}
    return [name for name in SAMPLING_BACKENDS
            if name not in needs or importlib.util.find_spec(needs[name]) is not None]


def set_default_backend(name: str) -> None:
    """Backend used when a call passes backend=None: a SAMPLING_BACKENDS name or "auto"."""
    global _default_backend
    if name != _AUTO and name not in SAMPLING_BACKENDS:
        raise ValueError(f"unknown sampling backend {name!r}; choose one of "
                         f"{[_AUTO, *SAMPLING_BACKENDS]}")
    if name != _AUTO:
        get_backend(name)  # fail now, with the missing package named, not at the first sample
    _default_backend = name


def get_default_backend() -> str:
    return _default_backend


def get_backend(name: str) -> SamplingBackend:
    if name not in SAMPLING_BACKENDS:
        raise ValueError(f"unknown sampling backend {name!r}; choose one of "
                         f"{list(SAMPLING_BACKENDS)}")
    if name not in _instances:
        _instances[name] = SAMPLING_BACKENDS[name]()
    return _instances[name]


def _resolve(backend: str | None, x: torch.Tensor) -> SamplingBackend:
    name = _default_backend if backend is None else backend
    if name == _AUTO:
        # Triton kernels need an accelerator; "auto" never picks the (slow) interpreter.
        on_device = x.device.type != "cpu"
        name = "triton" if on_device and importlib.util.find_spec("triton") else "torch"
    return get_backend(name)


def _nan_check(x: torch.Tensor, check_nan: bool, name: str = "probs") -> None:
    if check_nan and bool(torch.isnan(x).any()):
        raise ValueError(f"Input {name} contains NaN.")


def _sample(probs: torch.Tensor, indices: torch.Tensor | None, check_nan: bool,
            backend: str | None, **kw) -> torch.Tensor:
    check_probs(probs)
    check_indices(indices, probs)
    _nan_check(probs, check_nan)
    return _resolve(backend, probs).sample(probs, indices=indices, **kw)


def sampling_from_probs(probs: torch.Tensor, indices: torch.Tensor | None = None,
                        deterministic: bool = True, generator: torch.Generator | None = None,
                        check_nan: bool = False, seed: int | torch.Tensor | None = None,
                        offset: int | torch.Tensor | None = None, *,
                        backend: str | None = None) -> torch.Tensor:
    """Sample one token per output row in proportion to probs."""
    return _sample(probs, indices, check_nan, backend, top_k=None, top_p=None, min_p=None,
                   filter_apply_order="joint", generator=generator, seed=seed, offset=offset)


def top_k_sampling_from_probs(probs: torch.Tensor, top_k: int | torch.Tensor,
                              indices: torch.Tensor | None = None, deterministic: bool = True,
                              generator: torch.Generator | None = None, check_nan: bool = False,
                              seed: int | torch.Tensor | None = None,
                              offset: int | torch.Tensor | None = None, *,
                              backend: str | None = None) -> torch.Tensor:
    """Sample among the top_k most likely tokens (all tokens tied with the k-th are kept)."""
    return _sample(probs, indices, check_nan, backend, top_k=top_k, top_p=None, min_p=None,
                   filter_apply_order="joint", generator=generator, seed=seed, offset=offset)


def top_p_sampling_from_probs(probs: torch.Tensor, top_p: float | torch.Tensor,
                              indices: torch.Tensor | None = None, deterministic: bool = True,
                              generator: torch.Generator | None = None, check_nan: bool = False,
                              seed: int | torch.Tensor | None = None,
                              offset: int | torch.Tensor | None = None, *,
                              backend: str | None = None) -> torch.Tensor:
    """Nucleus sampling: among the smallest most-likely set with mass >= top_p (plus ties)."""
    return _sample(probs, indices, check_nan, backend, top_k=None, top_p=top_p, min_p=None,
                   filter_apply_order="joint", generator=generator, seed=seed, offset=offset)


def min_p_sampling_from_probs(probs: torch.Tensor, min_p: float | torch.Tensor,
                              indices: torch.Tensor | None = None, deterministic: bool = True,
                              generator: torch.Generator | None = None, check_nan: bool = False,
                              seed: int | torch.Tensor | None = None,
                              offset: int | torch.Tensor | None = None, *,
                              backend: str | None = None) -> torch.Tensor:
    """Sample among tokens with prob >= min_p * (the row's largest prob)."""
    return _sample(probs, indices, check_nan, backend, top_k=None, top_p=None, min_p=min_p,
                   filter_apply_order="joint", generator=generator, seed=seed, offset=offset)


def top_k_top_p_sampling_from_probs(probs: torch.Tensor, top_k: int | torch.Tensor,
                                    top_p: float | torch.Tensor,
                                    indices: torch.Tensor | None = None,
                                    filter_apply_order: str = "top_k_first",
                                    deterministic: bool = True,
                                    generator: torch.Generator | None = None,
                                    check_nan: bool = False,
                                    seed: int | torch.Tensor | None = None,
                                    offset: int | torch.Tensor | None = None, *,
                                    backend: str | None = None) -> torch.Tensor:
    """top-k and top-p together. "top_k_first": top-k, renormalize, then top-p; "joint": tokens
    that pass both filters on the original probs (faster here: one rejection loop, no search)."""
    check_filter_apply_order(filter_apply_order)
    return _sample(probs, indices, check_nan, backend, top_k=top_k, top_p=top_p, min_p=None,
                   filter_apply_order=filter_apply_order, generator=generator, seed=seed,
                   offset=offset)


def filtered_sampling_from_probs(probs: torch.Tensor, top_k: int | torch.Tensor | None = None,
                                 top_p: float | torch.Tensor | None = None,
                                 min_p: float | torch.Tensor | None = None,
                                 indices: torch.Tensor | None = None,
                                 filter_apply_order: str = "top_k_first",
                                 deterministic: bool = True,
                                 generator: torch.Generator | None = None,
                                 check_nan: bool = False, seed: int | torch.Tensor | None = None,
                                 offset: int | torch.Tensor | None = None, *,
                                 backend: str | None = None) -> torch.Tensor:
    """top-k, top-p and min-p in one call (not in FlashInfer's API; made for a batch where every
    request has its own values). Per row, a neutral value turns a filter off: top_k <= 0 or
    >= vocab, top_p >= 1, min_p <= 0.

    filter_apply_order: "top_k_first" (default) is top-k, renormalize, top-p, then min-p: the same
    as SGLang's top_k_renorm -> top_p_renorm -> min_p sampling. "min_p_first" is vLLM's order:
    min-p and top-k, renormalize, then top-p (so top_p counts only what min-p kept). "joint":
    every filter on the original probs. min_p always cuts at min_p * (row max).
    """
    check_filter_apply_order(filter_apply_order, FILTERED_ORDERS)
    return _sample(probs, indices, check_nan, backend, top_k=top_k, top_p=top_p, min_p=min_p,
                   filter_apply_order=filter_apply_order, generator=generator, seed=seed,
                   offset=offset)


def top_k_renorm_probs(probs: torch.Tensor, top_k: int | torch.Tensor, *,
                       backend: str | None = None) -> torch.Tensor:
    """probs restricted to the top_k most likely tokens (ties kept) and renormalized; zeros
    elsewhere. Same dtype as probs."""
    check_probs(probs)
    return _resolve(backend, probs).top_k_renorm_probs(probs, top_k)


def top_p_renorm_probs(probs: torch.Tensor, top_p: float | torch.Tensor, *,
                       backend: str | None = None) -> torch.Tensor:
    """probs restricted to the top-p nucleus and renormalized; zeros elsewhere. float32."""
    check_probs(probs)
    return _resolve(backend, probs).top_p_renorm_probs(probs, top_p)


def top_k_mask_logits(logits: torch.Tensor, top_k: int | torch.Tensor, *,
                      backend: str | None = None) -> torch.Tensor:
    """logits with everything below the k-th largest (ties kept) set to -inf. Same dtype."""
    check_probs(logits, "logits")
    return _resolve(backend, logits).top_k_mask_logits(logits, top_k)


__all__ = [
    "FILTERED_ORDERS",
    "FILTER_APPLY_ORDERS",
    "SAMPLING_BACKENDS",
    "SamplingBackend",
    "available_backends",
    "filtered_sampling_from_probs",
    "get_backend",
    "get_default_backend",
    "min_p_sampling_from_probs",
    "sampling_from_probs",
    "set_default_backend",
    "top_k_mask_logits",
    "top_k_renorm_probs",
    "top_k_sampling_from_probs",
    "top_k_top_p_sampling_from_probs",
    "top_p_renorm_probs",
    "top_p_sampling_from_probs",
]
