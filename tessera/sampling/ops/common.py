"""Argument normalization shared by the sampling backends, and the backend interface.

Every backend sees the same normalized arguments: per-row parameters as 1-D tensors of length 1
(broadcast) or batch, on the probs' device; randomness as int64 seed/offset tensors on that device.
Keeping these on the device is what lets a sampling call sit inside a CUDA graph: nothing here reads
a value back to the host.
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch

FILTER_APPLY_ORDERS = ("top_k_first", "joint")
# filtered_sampling_from_probs also takes vLLM's order: min-p and top-k, renormalize, then top-p
FILTERED_ORDERS = (*FILTER_APPLY_ORDERS, "min_p_first")
_INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Randomness:
    """Where a sampling call's random numbers come from.

    Output row i draws from the random stream keyed by seed[i or 0] at counter offset[i or 0].
    When the seed is per row (length == batch) each row's stream id is 0, so a row's sample depends
    only on its own (seed, offset, probs, parameters), never on which other rows share the batch.
    With one shared seed the stream id is the output row index, so rows still differ.
    """

    seed: torch.Tensor  # int64, shape (1,) or (batch,)
    offset: torch.Tensor  # int64, shape (1,) or (batch,)

    @property
    def per_row_seed(self) -> bool:
        return self.seed.numel() > 1

    def stream_ids(self, batch: int) -> torch.Tensor:
        if self.per_row_seed:
            return torch.zeros(batch, dtype=torch.int64, device=self.seed.device)
        return torch.arange(batch, dtype=torch.int64, device=self.seed.device)


def batch_size(probs: torch.Tensor, indices: torch.Tensor | None) -> int:
    return probs.shape[0] if indices is None else indices.shape[0]


def output_dtype(indices: torch.Tensor | None) -> torch.dtype:
    return torch.int32 if indices is None else indices.dtype


def check_probs(probs: torch.Tensor, name: str = "probs") -> None:
    if probs.dim() != 2:
        raise ValueError(f"{name} must be 2-D (batch, vocab), got shape {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {probs.dtype}")


def check_indices(indices: torch.Tensor | None, probs: torch.Tensor) -> None:
    if indices is None:
        return
    if indices.dim() != 1 or indices.dtype not in (torch.int32, torch.int64):
        raise ValueError("indices must be a 1-D int32 or int64 tensor mapping output rows to probs "
                         f"rows, got shape {tuple(indices.shape)} dtype {indices.dtype}")
    if indices.device != probs.device:
        raise ValueError(f"indices must be on {probs.device}, got {indices.device}")


def row_param(value: float | torch.Tensor | None, batch: int, device: torch.device,
              dtype: torch.dtype, name: str) -> torch.Tensor | None:
    """A scalar or per-row parameter as a device tensor of length 1 or `batch` (None stays None)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1)
        if value.dim() != 1 or value.shape[0] not in (1, batch):
            raise ValueError(f"{name} must be a scalar or a 1-D tensor of length {batch} "
                             f"(one per output row), got shape {tuple(value.shape)}")
        # kernels index per-row parameters as row * 1: a strided view (e.g. a column of a packed
        # [B, k] tensor) must be made contiguous, or rows would read their neighbours' values
        return value.to(device=device, dtype=dtype, non_blocking=True).contiguous()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} is NaN")
    return torch.full((1,), value, dtype=dtype, device=device)


def _as_int64(value: int | torch.Tensor, batch: int, device: torch.device, name: str
              ) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        if value.dtype not in (torch.int32, torch.int64, torch.uint64):
            raise ValueError(f"{name} tensor must be int64 (or int32), got {value.dtype}")
        value = value.reshape(-1) if value.dim() == 0 else value
        if value.dim() != 1 or value.shape[0] not in (1, batch):
            raise ValueError(f"{name} tensor must be 1-D of length 1 or {batch}, "
                             f"got shape {tuple(value.shape)}")
        return value.to(device=device, dtype=torch.int64, non_blocking=True).contiguous()
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or an int64 tensor, got {type(value).__name__}")
    # Python ints beyond int64 wrap, like a uint64 seed would when viewed as int64.
    value = (value + 2**63) % 2**64 - 2**63
    return torch.full((1,), value, dtype=torch.int64, device=device)


def resolve_randomness(seed: int | torch.Tensor | None, offset: int | torch.Tensor | None,
                       generator: torch.Generator | None, device: torch.device,
                       batch: int) -> Randomness:
    """Seed/offset tensors for one call.

    An explicit seed wins (offset defaults to 0). Otherwise one seed is drawn from `generator`, or
    from the device's default generator; torch.randint on the device's default generator is CUDA
    graph safe (replays advance its Philox offset), so the call can be captured either way.
    """
    if seed is not None:
        seed_t = _as_int64(seed, batch, device, "seed")
        offset_t = _as_int64(0 if offset is None else offset, batch, device, "offset")
        return Randomness(seed_t, offset_t)
    if generator is not None:
        drawn = torch.randint(0, _INT64_MAX, (1,), generator=generator, device=generator.device,
                              dtype=torch.int64)
        seed_t = drawn.to(device, non_blocking=True)
    else:
        seed_t = torch.randint(0, _INT64_MAX, (1,), device=device, dtype=torch.int64)
    offset_t = _as_int64(0 if offset is None else offset, batch, device, "offset")
    return Randomness(seed_t, offset_t)


def check_filter_apply_order(order: str, allowed: tuple[str, ...] = FILTER_APPLY_ORDERS) -> None:
    if order not in allowed:
        raise ValueError(f"filter_apply_order={order!r}; choose one of {list(allowed)}")


class SamplingBackend(ABC):
    """One implementation of the sampling ops. The public functions in tessera.sampling.ops check
    arguments and NaNs, then call exactly one of these methods.

    sample() covers every *_sampling_from_probs function: top_k / top_p / min_p are None when that
    filter is not requested, else a scalar or per-output-row tensor.
    """

    name: str

    @abstractmethod
    def sample(self, probs: torch.Tensor, *, indices: torch.Tensor | None,
               top_k: int | torch.Tensor | None, top_p: float | torch.Tensor | None,
               min_p: float | torch.Tensor | None, filter_apply_order: str,
               generator: torch.Generator | None, seed: int | torch.Tensor | None,
               offset: int | torch.Tensor | None) -> torch.Tensor: ...

    @abstractmethod
    def top_k_renorm_probs(self, probs: torch.Tensor, top_k: int | torch.Tensor
                           ) -> torch.Tensor: ...

    @abstractmethod
    def top_p_renorm_probs(self, probs: torch.Tensor, top_p: float | torch.Tensor
                           ) -> torch.Tensor: ...

    @abstractmethod
    def top_k_mask_logits(self, logits: torch.Tensor, top_k: int | torch.Tensor
                          ) -> torch.Tensor: ...


# ---- counter-based uniforms for the torch path ---------------------------------------------
# splitmix64 finalizer in int64 torch ops (multiplication wraps mod 2**64), so the torch backend can
# turn device-resident seeds into uniforms without a host round trip or a torch.Generator per row.
def _signed(x: int) -> int:
    return (x + 2**63) % 2**64 - 2**63


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_OFFSET_MUL = _signed(0xD6E8FEB86659FD93)
_STREAM_MUL = _signed(0xA0761D6478BD642F)


def _shr(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def _mix64(z: torch.Tensor) -> torch.Tensor:
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def counter_uniforms(rand: Randomness, batch: int) -> torch.Tensor:
    """One float64 uniform in (0, 1) per output row from (seed, offset, stream id)."""
    seed = rand.seed.expand(batch) if rand.seed.numel() == 1 else rand.seed
    offset = rand.offset.expand(batch) if rand.offset.numel() == 1 else rand.offset
    stream = rand.stream_ids(batch)
    z = _mix64(seed + _GOLDEN)
    z = _mix64(z ^ (offset * _OFFSET_MUL + _GOLDEN))
    z = _mix64(z ^ (stream * _STREAM_MUL + _GOLDEN))
    # top 53 bits -> (0, 1): the +0.5 keeps both ends open
    return (_shr(z, 11).to(torch.float64) + 0.5) * 2.0**-53
