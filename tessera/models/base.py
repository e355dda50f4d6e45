"""The model contract: everything the runner, the graph runners and the loader may rely on.

A model is pure math composed from tessera.layers. It implements:

* `forward(input_ids, positions)`: final hidden states [T, hidden] of every new token;
* `trunk(input_ids, positions)` / `finish(stream, rows)`: the same forward split after the last
  layer's attention. No token depends on another after that point, so prefill graphs compile and
  capture only the trunk (every token) and `finish` runs the rest on the rows that need logits:
  `finish(trunk(ids, pos), rows) == forward(ids, pos)[rows]`;
* `compute_logits(hidden)`: the LM head on final hidden states (full vocabulary on every rank);
* `kv_cache_spec()`: what the KV pool must hold per token and layer (tessera.cache.spec);
* `num_attention_heads()`: this rank's query heads (the attention backend sizes its workspaces);
* `load_weights(weights)`: route (checkpoint name, tensor) pairs to parameters through
  `checkpoint_renames` (fragment -> fragment, e.g. Mixtral's `block_sparse_moe` -> `mlp`),
  `expert_params_mapping` (per-expert tensors `<block>.experts.<e>.<proj>.weight` -> (our
  stacked parameter of the block, shard id), loaded with `expert_id=e`; a block-FP8
  checkpoint's `<proj>.weight_scale_inv` goes to that parameter's `_scale_inv` sibling),
  `packed_modules_mapping` (checkpoint name fragment -> (our merged parameter fragment, shard
  id)) and each parameter's `weight_loader` (which takes this rank's shard); returns the names
  of the parameters it loaded.

The runner never reaches into a model's submodules: a new model is one file implementing this
plus a registry entry (tessera.models.registry).
"""
from __future__ import annotations

import re
from abc import abstractmethod
from collections.abc import Iterable
from typing import ClassVar

import torch
from torch import nn

from tessera.cache.spec import KVCacheSpec
from tessera.layers.checkpoint_slice import materialize, takes_slices

# per-expert weights and, in block-FP8 checkpoints, their block scales
_EXPERT_TENSOR = re.compile(r"\.experts\.(\d+)\.(\w+)\.(weight|weight_scale_inv)$")


class CausalLM(nn.Module):
    packed_modules_mapping: ClassVar[dict[str, tuple[str, str | int]]] = {}
    checkpoint_renames: ClassVar[dict[str, str]] = {}
    expert_params_mapping: ClassVar[dict[str, tuple[str, int | None]]] = {}
    # checkpoint tensors that are not parameters of ours (recomputed buffers)
    skipped_checkpoint_names: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def trunk(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def finish(self, stream: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor: ...

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def kv_cache_spec(self) -> KVCacheSpec: ...

    @abstractmethod
    def num_attention_heads(self) -> int: ...

    def tied_checkpoint_names(self) -> set[str]:
        """Checkpoint tensors that are another parameter already (a tied LM head)."""
        return set()

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """Route each checkpoint tensor to its Parameter's weight_loader; returns loaded names."""
        params = dict(self.named_parameters())
        tied = self.tied_checkpoint_names()
        loaded: set[str] = set()
        for name, tensor in weights:
            if any(part in name for part in self.skipped_checkpoint_names) or name in tied:
                continue
            for old, new in self.checkpoint_renames.items():
                name = name.replace(old, new)
            expert = self._expert_target(name)
            if expert is not None:
                target, shard_id, expert_id = expert
                if target not in params:
                    raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in "
                                     f"{type(self).__name__}")
                params[target].weight_loader(params[target], tensor, shard_id,
                                             expert_id=expert_id)
                loaded.add(target)
                continue
            target, shard_id = name, None
            for ckpt_part, (ours, sid) in self.packed_modules_mapping.items():
                if f".{ckpt_part}." in name:
                    target, shard_id = name.replace(ckpt_part, ours), sid
                    break
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no matching parameter in "
                                 f"{type(self).__name__}")
            param = params[target]
            loader = getattr(param, "weight_loader", None)
            if not takes_slices(loader):  # a CheckpointSlice is read whole only here
                tensor = materialize(tensor)
            if loader is None:
                param.data.copy_(tensor)
            elif shard_id is None:
                loader(param, tensor)
            else:
                loader(param, tensor, shard_id)
            loaded.add(target)
        return loaded

    def _expert_target(self, name: str) -> tuple[str, int | None, int] | None:
        """(stacked parameter, shard id, expert id) of a per-expert checkpoint tensor."""
        match = _EXPERT_TENSOR.search(name) if self.expert_params_mapping else None
        if match is None or match.group(2) not in self.expert_params_mapping:
            return None
        param, shard_id = self.expert_params_mapping[match.group(2)]
        suffix = "_scale_inv" if match.group(3) == "weight_scale_inv" else ""
        return f"{name[:match.start()]}.{param}{suffix}", shard_id, int(match.group(1))

    def process_weights_after_loading(self) -> None:
        """Once every weight is in place (checkpoint or dummy): each linear layer's QuantMethod
        may repack or requantize its weights."""
        for module in self.modules():
            method = getattr(module, "quant_method", None)
            if method is not None:
                method.process_weights_after_loading(module)
