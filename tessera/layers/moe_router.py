"""Routing of a mixture-of-experts layer: router logits -> (weights, expert ids) per token.

Two families, as the checkpoints define them:

* softmax top-k (Mixtral, Qwen2/3-MoE): softmax over all experts, the top_k largest, optionally
  renormalised to sum to 1 (`renormalize`, HF's `norm_topk_prob`; Mixtral always does);
* grouped top-k (DeepSeek-V2/V3): experts in `n_group` groups; each token first keeps the
  `topk_group` best groups, then picks top_k experts among them. DeepSeek-V3 scores with a
  sigmoid and adds a learned per-expert `correction_bias` for the *choice* only (the weights are
  the unbiased scores), ranking groups by the sum of their two best biased scores; without a
  bias a group's score is its best expert's (DeepSeek-V2).

Weights are then multiplied by `routed_scaling_factor`. Everything is plain PyTorch on the
router's [T, E] logits, computed in float32, and traceable by torch.compile.
"""
from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class MoERouting:
    top_k: int
    renormalize: bool = False
    scoring_func: str = "softmax"  # "softmax" | "sigmoid"
    n_group: int = 1  # grouped top-k when > 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        if self.scoring_func not in ("softmax", "sigmoid"):
            raise ValueError(f"unsupported MoE scoring function {self.scoring_func!r}; "
                             f"tessera supports softmax and sigmoid")
        if self.n_group > 1 and not 1 <= self.topk_group <= self.n_group:
            raise ValueError(f"topk_group {self.topk_group} must be in [1, n_group "
                             f"{self.n_group}]")


def select_experts(router_logits: torch.Tensor, routing: MoERouting,
                   correction_bias: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_weights [T, K] float32, topk_ids [T, K] int64) for router logits [T, E]."""
    logits = router_logits.float()
    if routing.scoring_func == "softmax":
        scores = torch.softmax(logits, dim=-1)
    else:
        scores = torch.sigmoid(logits)
    choice = scores if correction_bias is None else scores + correction_bias.float()
    if routing.n_group > 1:
        choice = _keep_best_groups(choice, routing, biased=correction_bias is not None)
    topk_ids = torch.topk(choice, routing.top_k, dim=-1).indices
    topk_weights = scores.gather(1, topk_ids)
    if routing.renormalize:
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
    if routing.routed_scaling_factor != 1.0:
        topk_weights = topk_weights * routing.routed_scaling_factor
    return topk_weights, topk_ids


def _keep_best_groups(choice: torch.Tensor, routing: MoERouting, biased: bool) -> torch.Tensor:
    """`choice` with every expert outside each token's topk_group best groups at -inf."""
    num_tokens, num_experts = choice.shape
    if num_experts % routing.n_group:
        raise ValueError(f"{num_experts} experts do not split into {routing.n_group} groups")
    grouped = choice.view(num_tokens, routing.n_group, num_experts // routing.n_group)
    if biased:
        group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
    else:
        group_scores = grouped.max(dim=-1).values
    best = torch.topk(group_scores, routing.topk_group, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
    return grouped.masked_fill(~keep[:, :, None], float("-inf")).view(num_tokens, num_experts)


__all__ = ["MoERouting", "select_experts"]
