"""FusedMoE: routing variants against a direct per-token computation, the block against dense
expert MLPs, per-expert checkpoint loading, and TP over the expert intermediate dim."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tessera.distributed import set_tensor_parallel
from tessera.layers.moe import FusedMoE
from tessera.layers.moe_router import MoERouting, select_experts

H, I, E, SHARED = 32, 24, 8, 40


def _direct_routing(logits: torch.Tensor, r: MoERouting, bias: torch.Tensor | None):
    """Token by token, in the words of the model cards: score, pick groups, pick experts."""
    weights, ids = [], []
    for row in logits.float():
        scores = row.softmax(-1) if r.scoring_func == "softmax" else row.sigmoid()
        choice = scores + (bias if bias is not None else 0)
        allowed = list(range(E))
        if r.n_group > 1:
            size = E // r.n_group
            groups = [choice[g * size:(g + 1) * size] for g in range(r.n_group)]
            rank = [float(g.sort(descending=True).values[:2].sum()) if bias is not None
                    else float(g.max()) for g in groups]
            best = sorted(range(r.n_group), key=lambda g: -rank[g])[:r.topk_group]
            allowed = [e for g in best for e in range(g * size, (g + 1) * size)]
        picked = sorted(allowed, key=lambda e: -float(choice[e]))[:r.top_k]
        w = scores[picked]
        if r.renormalize:
            w = w / w.sum()
        weights.append(w * r.routed_scaling_factor)
        ids.append(torch.tensor(picked))
    return torch.stack(weights), torch.stack(ids)


ROUTINGS = {
    "softmax": MoERouting(top_k=2),
    "softmax-renorm": MoERouting(top_k=3, renormalize=True),
    "softmax-grouped": MoERouting(top_k=2, n_group=4, topk_group=2),
    "sigmoid-grouped-bias": MoERouting(top_k=3, renormalize=True, scoring_func="sigmoid",
                                       n_group=4, topk_group=2, routed_scaling_factor=2.5),
}


@pytest.mark.parametrize("name", list(ROUTINGS))
def test_select_experts_matches_direct_computation(name):
    routing = ROUTINGS[name]
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(11, E, generator=g)
    bias = torch.randn(E, generator=g) * 0.5 if "bias" in name else None
    weights, ids = select_experts(logits, routing, bias)
    ref_w, ref_ids = _direct_routing(logits, routing, bias)
    assert ids.tolist() == ref_ids.tolist()
    torch.testing.assert_close(weights, ref_w)
    if "bias" in name:  # the bias changes the choice, never the weights' source
        _, unbiased = select_experts(logits, routing)
        assert ids.tolist() != unbiased.tolist()


def _checkpoint(seed: int = 0) -> dict[str, torch.Tensor]:
    """Per-expert tensors as checkpoints store them, plus a router and a shared expert."""
    g = torch.Generator().manual_seed(seed)
    t = {"gate": torch.randn(E, H, generator=g) * 0.3,
         "shared_gate": torch.randn(1, H, generator=g) * 0.3,
         "shared.gate_proj": torch.randn(SHARED, H, generator=g) * 0.2,
         "shared.up_proj": torch.randn(SHARED, H, generator=g) * 0.2,
         "shared.down_proj": torch.randn(H, SHARED, generator=g) * 0.2}
    for e in range(E):
        t[f"{e}.gate_proj"] = torch.randn(I, H, generator=g) * 0.2
        t[f"{e}.up_proj"] = torch.randn(I, H, generator=g) * 0.2
        t[f"{e}.down_proj"] = torch.randn(H, I, generator=g) * 0.2
    return t


def _build(ckpt: dict[str, torch.Tensor], routing: MoERouting) -> FusedMoE:
    layer = FusedMoE(H, I, E, routing, torch.float32, shared_intermediate_size=SHARED,
                     shared_expert_gate=True)
    layer.gate.weight.data.copy_(ckpt["gate"])
    layer.shared_expert_gate.weight.weight_loader(layer.shared_expert_gate.weight,
                                                  ckpt["shared_gate"])
    gate_up = layer.shared_expert.gate_up_proj.weight
    gate_up.weight_loader(gate_up, ckpt["shared.gate_proj"], 0)
    gate_up.weight_loader(gate_up, ckpt["shared.up_proj"], 1)
    down = layer.shared_expert.down_proj.weight
    down.weight_loader(down, ckpt["shared.down_proj"])
    for e in range(E):
        layer.w13_weight.weight_loader(layer.w13_weight, ckpt[f"{e}.gate_proj"], 0, expert_id=e)
        layer.w13_weight.weight_loader(layer.w13_weight, ckpt[f"{e}.up_proj"], 1, expert_id=e)
        layer.w2_weight.weight_loader(layer.w2_weight, ckpt[f"{e}.down_proj"], None,
                                      expert_id=e)
    return layer


def _dense_reference(x: torch.Tensor, ckpt: dict[str, torch.Tensor], routing: MoERouting):
    """Each token through its chosen experts' MLPs (the checkpoint's own tensors) and the gated
    shared expert."""
    weights, ids = _direct_routing(x @ ckpt["gate"].T, routing, None)
    out = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(routing.top_k):
            e = int(ids[t, k])
            h = F.silu(ckpt[f"{e}.gate_proj"] @ x[t]) * (ckpt[f"{e}.up_proj"] @ x[t])
            out[t] += weights[t, k] * (ckpt[f"{e}.down_proj"] @ h)
        shared = ckpt["shared.down_proj"] @ (F.silu(ckpt["shared.gate_proj"] @ x[t])
                                             * (ckpt["shared.up_proj"] @ x[t]))
        out[t] += torch.sigmoid(ckpt["shared_gate"] @ x[t]) * shared
    return out


def test_fused_moe_block_matches_dense_experts():
    routing = ROUTINGS["softmax-renorm"]
    ckpt = _checkpoint()
    layer = _build(ckpt, routing)
    x = torch.randn(13, H, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer(x), _dense_reference(x, ckpt, routing), atol=1e-5,
                               rtol=1e-5)
    # forward_norm: the decoder layer's entry point (norm of x + residual, then the block)
    norm = torch.nn.RMSNorm(H, eps=1e-6)
    out, residual = layer.forward_norm(x, None, lambda v: norm(v))
    torch.testing.assert_close(out, layer(norm(x)))
    assert residual is x


def test_fused_moe_triton_binding_matches_native():
    pytest.importorskip("triton")
    if torch.cuda.is_available():
        pytest.skip("interpreter test; tests/ops/test_fused_moe.py runs the compiled kernel")
    from tessera.ops.triton.interpreter import patch_for_numpy_2_4

    patch_for_numpy_2_4()  # Triton 3.6's interpreter vs numpy >= 2.4 (a no-op on a GPU)
    layer = _build(_checkpoint(2), ROUTINGS["sigmoid-grouped-bias"])
    layer.gate.e_score_correction_bias = None
    x = torch.randn(6, H, generator=torch.Generator().manual_seed(3))
    native = layer(x)
    layer.expert_op._forward_method = layer.expert_op.forward_cuda  # as bound on a GPU
    torch.testing.assert_close(layer(x), native, atol=1e-5, rtol=1e-5)


def test_tensor_parallel_partials_sum_to_the_whole():
    """Each of 2 ranks keeps I/2 of every expert (and of the shared expert); the sum of their
    partial outputs (what the all-reduce adds) is the tp=1 output."""
    routing = ROUTINGS["softmax"]
    ckpt = _checkpoint(4)
    x = torch.randn(9, H, generator=torch.Generator().manual_seed(5))
    whole = _build(ckpt, routing)(x)
    partials = []
    try:
        for rank in range(2):
            set_tensor_parallel(rank, 2)
            layer = _build(ckpt, routing)
            assert layer.w13_weight.shape == (E, I, H) and layer.w2_weight.shape == (E, H, I // 2)
            torch.testing.assert_close(layer.w13_weight[3, :I // 2],
                                       ckpt["3.gate_proj"][rank * I // 2:(rank + 1) * I // 2])
            partials.append(layer.partial(x))
    finally:
        set_tensor_parallel(0, 1)
    assert not torch.allclose(partials[0], whole, atol=1e-3)
    torch.testing.assert_close(partials[0] + partials[1], whole, atol=1e-5, rtol=1e-5)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="top_k"):
        FusedMoE(H, I, 2, MoERouting(top_k=3), torch.float32)
    with pytest.raises(ValueError, match="scoring"):
        MoERouting(top_k=2, scoring_func="relu")
    layer = FusedMoE(H, I, E, MoERouting(top_k=2), torch.float32)
    with pytest.raises(ValueError, match="expert 8"):
        layer.weight_loader(layer.w2_weight, torch.zeros(H, I), None, expert_id=8)
    with pytest.raises(ValueError, match="shape mismatch"):
        layer.weight_loader(layer.w2_weight, torch.zeros(H + 1, I), None, expert_id=0)
