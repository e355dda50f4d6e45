"""The Triton fused MoE against the per-expert torch reference (interpreter on the CPU, tiny
sizes), the token-to-expert alignment, and both custom ops' registrations (opcheck)."""
from __future__ import annotations

import pytest
import torch

from tessera.ops import custom_ops  # noqa: F401  (registers tessera::fused_moe*)
from tessera.ops.moe import fused_moe_torch, moe_align_block_size

pytest.importorskip("triton")


def _problem(num_tokens: int, num_experts: int, top_k: int, hidden: int, inter: int,
             device: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tokens, hidden, generator=g)
    w13 = torch.randn(num_experts, 2 * inter, hidden, generator=g) * hidden ** -0.5
    w2 = torch.randn(num_experts, hidden, inter, generator=g) * inter ** -0.5
    probs = torch.randn(num_tokens, num_experts, generator=g).softmax(-1)
    weights, ids = torch.topk(probs, top_k, dim=-1)
    return [t.to(device) for t in (x.to(dtype), w13.to(dtype), w2.to(dtype), weights, ids)]


@pytest.mark.parametrize("num_tokens", [1, 5, 33])
@pytest.mark.parametrize("num_experts,top_k", [(4, 2), (8, 2), (8, 6)])
def test_triton_fused_moe_matches_reference(device, num_tokens, num_experts, top_k):
    from tessera.ops.triton.fused_moe import fused_moe

    # hidden 48 / inter 40: not multiples of the 16-wide tiles, so the masks are exercised
    args = _problem(num_tokens, num_experts, top_k, 48, 40, device)
    torch.testing.assert_close(fused_moe(*args), fused_moe_torch(*args), atol=1e-5, rtol=1e-5)


def test_triton_fused_moe_with_explicit_blocks(device):
    """Several K steps and several N blocks per program grid (small tiles on a larger shape)."""
    from tessera.ops.triton.fused_moe import fused_moe
    from tessera.ops.triton.moe_config import MoEKernelConfig

    args = _problem(9, 4, 2, 96, 80, device, seed=1)
    cfg = MoEKernelConfig(block_m=16, block_n=16, block_k=32)
    torch.testing.assert_close(fused_moe(*args, config=cfg), fused_moe_torch(*args),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("num_tokens,top_k", [(1, 2), (3, 6), (4, 8)])
def test_small_batch_path_matches_reference(device, num_tokens, top_k):
    """Decode-sized batches take the per-pair GEMVs (no sort): several K steps and N blocks per
    program, masked tails (hidden 96, inter 80 against 16 x 32 tiles)."""
    from tessera.ops.triton.fused_moe import fused_moe
    from tessera.ops.triton.fused_moe_small import SMALL_BATCH_MAX_PAIRS, fused_moe_small_batch

    args = _problem(num_tokens, 8, top_k, 96, 80, device, seed=2)
    assert num_tokens * top_k <= SMALL_BATCH_MAX_PAIRS  # what fused_moe dispatches to
    ref = fused_moe_torch(*args)
    for tile_acc in (False, True):  # per-step reductions, or one [N, K] tile reduced at the end
        torch.testing.assert_close(
            fused_moe_small_batch(*args, block_n=16, block_k=32, tile_acc=tile_acc), ref,
            atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fused_moe(*args), ref, atol=1e-5, rtol=1e-5)


def test_reference_is_a_sum_of_dense_expert_mlps():
    """The reference against the formula, token by token (no sorting, no gathering)."""
    x, w13, w2, weights, ids = _problem(6, 4, 2, 16, 8, "cpu", seed=2)
    inter = w13.shape[1] // 2
    expected = torch.zeros_like(x)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            e = int(ids[t, k])
            gate, up = w13[e, :inter] @ x[t], w13[e, inter:] @ x[t]
            expected[t] += weights[t, k] * (w2[e] @ (torch.nn.functional.silu(gate) * up))
    torch.testing.assert_close(fused_moe_torch(x, w13, w2, weights, ids), expected,
                               atol=1e-5, rtol=1e-5)


def test_align_sorts_pairs_into_single_expert_blocks():
    ids = torch.tensor([[2, 0], [2, 1], [0, 2], [2, 3]])
    sorted_ids, expert_ids, num_padded = moe_align_block_size(ids, 4, block_m=4)
    flat = ids.reshape(-1)
    pairs = flat.numel()
    # expert 0: 2 pairs, 1: 1, 2: 4, 3: 1 -> each padded to 4 rows: 16 used rows, 4 blocks
    assert int(num_padded) == 16
    assert expert_ids[:4].tolist() == [0, 1, 2, 3]
    assert sorted_ids.numel() == expert_ids.numel() * 4
    for block, expert in enumerate(expert_ids[:4].tolist()):
        rows = sorted_ids[block * 4:(block + 1) * 4]
        real = rows[rows < pairs].long()
        assert (flat[real] == expert).all()
        assert real.tolist() == sorted(real.tolist())  # stable: token order kept
    used = sorted_ids[:16]
    assert sorted(used[used < pairs].tolist()) == list(range(pairs))  # every pair exactly once
    assert (sorted_ids[16:] == pairs).all()


@pytest.mark.parametrize("op", ["fused_moe", "fused_moe_torch"])
def test_custom_ops_pass_opcheck(device, op):
    args = _problem(5, 4, 2, 32, 16, device, seed=3)
    torch.library.opcheck(getattr(torch.ops.tessera, op), args,
                          test_utils=("test_schema", "test_faketensor"))


def test_fused_moe_traces_as_one_node():
    """torch.compile(fullgraph) keeps the op opaque: one node, its output shape from the fake."""
    args = _problem(7, 4, 2, 32, 16, "cpu", seed=4)
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    fn = torch.compile(lambda *a: torch.ops.tessera.fused_moe_torch(*a) * 2, backend=backend,
                       fullgraph=True)
    out = fn(*args)
    torch.testing.assert_close(out, 2 * fused_moe_torch(*args))
    (gm,) = graphs
    calls = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert calls[0] in (torch.ops.tessera.fused_moe_torch,
                        torch.ops.tessera.fused_moe_torch.default)
    assert len(calls) == 2  # the op and the product: nothing of the reference's loop


@pytest.mark.gpu
@pytest.mark.parametrize("num_tokens", [1, 4, 8, 64, 512, 4096])
@pytest.mark.parametrize("num_experts,top_k,hidden,inter", [(128, 8, 2048, 768),  # Qwen3-30B-A3B
                                                             (64, 6, 2048, 1408),  # DS-V2-Lite
                                                             (8, 2, 4096, 14336)])  # Mixtral
def test_triton_fused_moe_real_shapes_bf16(num_tokens, num_experts, top_k, hidden, inter):
    from tessera.ops.triton.fused_moe import fused_moe

    args = _problem(num_tokens, num_experts, top_k, hidden, inter, "cuda", torch.bfloat16)
    ref = fused_moe_torch(*args).float()
    torch.testing.assert_close(fused_moe(*args).float(), ref, atol=2e-2, rtol=2e-2)
