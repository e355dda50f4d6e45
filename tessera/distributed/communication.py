"""Communication ops of the tensor-parallel group, as torch.library custom ops.

Registered with fake kernels so torch.compile traces each call as one node (the piecewise graph
keeps it inside a piece or splits at it, as the compilation backend decides), and so decode CUDA
graphs capture them like any other kernel. At TP size 1 the Python wrappers return their input
and no op is called: a single-GPU forward is unchanged.

gloo has no reduce_scatter: there it is an all-reduce followed by taking this rank's slice.

A reduce-scatter needs dim 0 to divide by the group size, and refuses anything else with an error
(never a silent wrong split): callers that scatter tokens pad eagerly, and the graph runners keep
every captured token count a multiple of the group size (tessera.compilation.capture_sizes).
`tensor_parallel_all_gather_tokens` is its inverse for the token dim: it takes the gathered row
count as an argument, so that under torch.compile the output has the caller's symbolic token
count rather than `size * (count // size)`, which Dynamo could only equate with a guard.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from tessera.distributed.parallel_state import tp_group


@torch.library.custom_op("tessera::tp_all_reduce", mutates_args=())
def _all_reduce(x: torch.Tensor) -> torch.Tensor:
    out = x.clone()
    dist.all_reduce(out, group=tp_group().group)
    return out


@_all_reduce.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)


@torch.library.custom_op("tessera::tp_all_gather", mutates_args=())
def _all_gather(x: torch.Tensor, dim: int) -> torch.Tensor:
    info = tp_group()
    parts = [torch.empty_like(x) for _ in range(info.size)]
    dist.all_gather(parts, x.contiguous(), group=info.group)
    return torch.cat(parts, dim=dim)


@_all_gather.register_fake
def _(x: torch.Tensor, dim: int) -> torch.Tensor:
    shape = list(x.shape)
    shape[dim] *= tp_group().size
    return x.new_empty(shape)


@torch.library.custom_op("tessera::tp_reduce_scatter", mutates_args=())
def _reduce_scatter(x: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, then this rank's 1/size of dim 0 (which must divide by the size)."""
    info = tp_group()
    rows = x.shape[0] // info.size
    if x.shape[0] % info.size:
        raise ValueError(f"reduce-scatter of {x.shape[0]} rows over a tensor-parallel group of "
                         f"{info.size}: the rows must be a multiple of the group size (pad them, "
                         f"or capture only token counts that are multiples)")
    if dist.get_backend(info.group) == "gloo":
        out = x.clone()
        dist.all_reduce(out, group=info.group)
        return out[info.rank * rows:(info.rank + 1) * rows].clone()
    out = x.new_empty((rows, *x.shape[1:]))
    dist.reduce_scatter_tensor(out, x.contiguous(), group=info.group)
    return out


@_reduce_scatter.register_fake
def _(x: torch.Tensor) -> torch.Tensor:
    return x.new_empty((x.shape[0] // tp_group().size, *x.shape[1:]))


@torch.library.custom_op("tessera::tp_all_gather_tokens", mutates_args=())
def _all_gather_tokens(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """The ranks' rows of x [n, ...] in rank order: [num_tokens, ...], num_tokens == size * n."""
    info = tp_group()
    if num_tokens != x.shape[0] * info.size:
        raise ValueError(f"all-gather of {x.shape[0]} rows per rank over {info.size} ranks "
                         f"cannot make {num_tokens} rows")
    out = x.new_empty((num_tokens, *x.shape[1:]))
    if dist.get_backend(info.group) == "gloo":  # no all_gather_into_tensor there
        dist.all_gather(list(out.chunk(info.size)), x.contiguous(), group=info.group)
    else:
        dist.all_gather_into_tensor(out, x.contiguous(), group=info.group)
    return out


@_all_gather_tokens.register_fake
def _(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    return x.new_empty((num_tokens, *x.shape[1:]))


def tensor_parallel_all_reduce(x: torch.Tensor) -> torch.Tensor:
    """Sum of x over the TP group (x itself at TP size 1)."""
    if tp_group().size == 1:
        return x
    return torch.ops.tessera.tp_all_reduce(x)


def tensor_parallel_all_gather(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """The ranks' x concatenated along `dim` in rank order (x itself at TP size 1)."""
    if tp_group().size == 1:
        return x
    return torch.ops.tessera.tp_all_gather(x, dim % x.dim())


def tensor_parallel_all_gather_tokens(x: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Every rank's rows of x in rank order, `num_tokens` (= size * rows) of them: the inverse of
    tensor_parallel_reduce_scatter's split (x itself at TP size 1)."""
    if tp_group().size == 1:
        return x
    return torch.ops.tessera.tp_all_gather_tokens(x, num_tokens)


def tensor_parallel_reduce_scatter(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of the sum over the group (x itself at TP size 1)."""
    if tp_group().size == 1:
        return x
    return torch.ops.tessera.tp_reduce_scatter(x)
