"""Process groups and the communication ops layers call (identities at TP size 1)."""
from tessera.distributed.communication import (
    tensor_parallel_all_gather,
    tensor_parallel_all_gather_tokens,
    tensor_parallel_all_reduce,
    tensor_parallel_reduce_scatter,
)
from tessera.distributed.parallel_state import (
    attn_tp_group,
    control_group,
    destroy_distributed,
    get_moe_dense_tp_size,
    get_tp_rank,
    get_tp_size,
    init_distributed,
    set_tensor_parallel,
    tensor_parallel_as,
    tokens_scattered,
    tp_group,
)

__all__ = ["attn_tp_group", "control_group", "destroy_distributed", "get_moe_dense_tp_size",
           "get_tp_rank", "get_tp_size", "init_distributed", "set_tensor_parallel",
           "tensor_parallel_all_gather", "tensor_parallel_all_gather_tokens",
           "tensor_parallel_all_reduce", "tensor_parallel_as", "tensor_parallel_reduce_scatter",
           "tokens_scattered", "tp_group"]
