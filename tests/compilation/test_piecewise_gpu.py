"""Piecewise CUDA graphs on a GPU: real capture and replay against eager, bf16."""
from __future__ import annotations

import json

import pytest
import torch
from hf_models import save_tiny_model
from pcg_helpers import MixedBatches, eager_logits, make_pcg_runner, pcg_and_eager_logits, pcg_of

from tessera.forward.batch import ForwardMode
from tessera.models.presets import PRESETS

pytestmark = pytest.mark.gpu

MAX_TOKENS = 64
ATOL, RTOL = 6e-2, 2e-2  # bf16: padding changes the matmul tiling, so rounding differs


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return ((ours.float() - reference.float()).norm() / reference.float().norm()).item()


@pytest.fixture(scope="module", params=[("llama", "triton"), ("qwen3", "triton"),
                                        ("llama", "torch_native")], ids=lambda p: "-".join(p))
def runner(request, tmp_path_factory):
    kind, backend = request.param
    path = save_tiny_model(str(tmp_path_factory.mktemp(kind)), kind, dtype=torch.bfloat16)
    runner = make_pcg_runner(path, "cuda", "bfloat16", attention_backend=backend,
                             piecewise_cuda_graph_max_tokens=MAX_TOKENS)
    pcg_of(runner).state.check_addresses = True  # every replay checks its inputs did not move
    return runner


def test_every_size_is_captured_for_every_piece(runner):
    pcg = pcg_of(runner)
    assert pcg.use_graphs and runner.graph_pool is pcg.state.graph_pool
    pieces = pcg.backend.graph_pieces
    assert len(pieces) == runner.model_config.num_hidden_layers + 1
    for piece in pieces:
        assert sorted(piece.graphs) == pcg.capture_sizes
    assert pcg.state.graphs_captured == len(pcg.capture_sizes) * len(pieces)
    assert 0 < pcg.capture_seconds < 60
    assert pcg.capture_memory_bytes < 1 << 30


def test_forwards_bypass_dynamo(runner):
    """After capture, forwards run the size's replay plan (no Dynamo, no split-graph code); the
    split graph's direct call (no guard evaluation) is there for everything else."""
    pcg = pcg_of(runner)
    assert pcg.backend.direct is not None, pcg.backend.no_direct_reason
    assert sorted(pcg.plans) == pcg.capture_sizes
    direct, dynamo = pcg.backbone.direct_calls, pcg.backbone.dynamo_calls
    batches = MixedBatches(runner)
    plan = pcg.plans[pcg.padded_size(9)]
    replays = plan.replays
    pcg_and_eager_logits(runner, batches.mixed(9))
    assert plan.replays == replays + 1
    assert (pcg.backbone.direct_calls, pcg.backbone.dynamo_calls) == (direct, dynamo)
    batches.free()


def test_plan_direct_call_and_dynamo_give_identical_hidden_states(runner, monkeypatch):
    """The same batch through the replay plan, the direct call and Dynamo's guards: the same
    graphs and attention calls, so bitwise the same hidden states."""
    pcg = pcg_of(runner)
    monkeypatch.setattr(pcg, "max_full_requests", 0)  # the pieces for every batch
    batches = MixedBatches(runner)
    outs = {}
    for total in (3, 16, 33):
        batch = batches.mixed(total)
        with torch.inference_mode():
            outs["plan"] = pcg.replay(batch).clone()
            with monkeypatch.context() as m:
                m.setattr(pcg, "plans", {})
                calls = pcg.backbone.direct_calls
                outs["direct"] = pcg.replay(batch).clone()
                assert pcg.backbone.direct_calls == calls + 1
                m.setattr(pcg.backend, "direct", None)
                calls = pcg.backbone.dynamo_calls
                outs["dynamo"] = pcg.replay(batch).clone()
                assert pcg.backbone.dynamo_calls == calls + 1
        assert torch.equal(outs["plan"], outs["direct"]), f"{total} tokens"
        assert torch.equal(outs["plan"], outs["dynamo"]), f"{total} tokens"
        batches.free()
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0


def test_logits_equal_eager_for_every_size_in_mixed_batches(runner):
    pcg = pcg_of(runner)
    batches = MixedBatches(runner)
    same_argmax = tokens = 0
    for total in range(1, MAX_TOKENS + 1):
        batch = batches.mixed(total)
        ours, eager = pcg_and_eager_logits(runner, batch)
        context = f"{total} tokens padded to {pcg.padded_size(total)}"
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL,
                                   msg=lambda m, c=context: f"{c}: {m}")
        same_argmax += (ours.all_logits.argmax(-1) == eager.all_logits.argmax(-1)).sum().item()
        tokens += total
        batches.free()
    assert same_argmax >= 0.95 * tokens  # bf16 rounding may flip near-ties, nothing more
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0


def test_whole_forward_graphs_equal_eager(runner):
    """Extend batches of at most --piecewise-cuda-graph-max-requests requests replay the size's
    whole-forward graph (pieces and attention in one graph), larger ones the pieces; both give
    eager's logits for every size, in batches of new prompts and of decoding requests mixed with
    extends on cached prefixes."""
    pcg = pcg_of(runner)
    if runner.attn_backend.support.extend_graph:
        assert pcg.max_full_requests == 4 and sorted(pcg.full_graphs) == pcg.capture_sizes
    else:
        assert pcg.max_full_requests == 0 and not pcg.full_graphs
        return
    batches = MixedBatches(runner, seed=3)
    for total in range(1, MAX_TOKENS + 1):
        old = batches.prefill([3, 6])
        small = [batches.new_prompt(total, all_logits=False)]
        if total >= 3:  # a decoding request, an extend on a prefix, a new prompt: 3 requests
            small.append(batches.build([(old[0], 1), (old[1], total - 2),
                                        (batches._row(), 1)], return_all_logits=False))
        for batch in small:  # next-token logits: the whole-forward graph
            full = pcg.full_replays
            ours, eager = pcg_and_eager_logits(runner, batch)
            assert pcg.full_replays == full + 1, f"{total} tokens: not the whole-forward graph"
            torch.testing.assert_close(ours.next_token_logits, eager.next_token_logits,
                                       atol=ATOL, rtol=RTOL,
                                       msg=lambda m, t=total: f"{t} tokens: {m}")
        # every token's logits: the pieces, then the last layer's MLP on every token
        pieces = pcg.replays
        ours, eager = pcg_and_eager_logits(runner, batches.new_prompt(total))
        assert pcg.replays == pieces + 1
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL)
        if total >= 9:  # five requests: the pieces
            for all_logits in (False, True):
                pieces = pcg.replays
                big = batches.mixed(total, all_logits)
                assert big.batch_size == 5
                ours, eager = pcg_and_eager_logits(runner, big)
                assert pcg.replays == pieces + 1
                torch.testing.assert_close(ours.next_token_logits, eager.next_token_logits,
                                           atol=ATOL, rtol=RTOL)
                if all_logits:
                    torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL,
                                               rtol=RTOL)
        batches.free()
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0


def test_inductor_pieces_replay_like_eager(tmp_path):
    path = save_tiny_model(str(tmp_path / "llama"), "llama", dtype=torch.bfloat16)
    runner = make_pcg_runner(path, "cuda", "bfloat16", attention_backend="triton",
                             piecewise_cuda_graph_max_tokens=32,
                             piecewise_cuda_graph_compiler="inductor")
    pcg = pcg_of(runner)
    pcg.state.check_addresses = True
    assert pcg.state.graphs_captured == len(pcg.capture_sizes) * len(pcg.backend.graph_pieces)
    batches = MixedBatches(runner)
    for total in (1, 2, 5, 16, 17, 32):
        ours, eager = pcg_and_eager_logits(runner, batches.mixed(total))
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL)
        batches.free()
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0


def test_shares_the_pool_with_decode_graphs(tmp_path):
    """Decode batches replay the decode graphs, extend batches the piecewise ones, one pool."""
    path = save_tiny_model(str(tmp_path / "qwen3"), "qwen3", dtype=torch.bfloat16)
    runner = make_pcg_runner(path, "cuda", "bfloat16", attention_backend="triton",
                             disable_cuda_graph=False, cuda_graph_max_bs=8,
                             piecewise_cuda_graph_max_tokens=32)
    pcg = pcg_of(runner)
    decode_runner = runner.graph_runners[0]
    assert decode_runner is not pcg
    assert decode_runner.parts.graph_pool is pcg.state.graph_pool is runner.graph_pool
    batches = MixedBatches(runner)
    rows = batches.prefill([5, 9, 3])
    for step in range(4):
        extend = batches.mixed(7 + step)
        ours, eager = pcg_and_eager_logits(runner, extend)
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL)
        decode = batches.build([(r, 1) for r in rows])
        decode.mode = ForwardMode.DECODE
        assert decode_runner.can_run(decode) and not pcg.can_run(decode)
        got = runner.forward(decode).next_token_logits
        torch.testing.assert_close(got, eager_logits(runner, decode).next_token_logits,
                                   atol=ATOL, rtol=RTOL)
        batches.free(keep=rows)


def test_replay_equals_eager_on_a_llama3_8b_shaped_model(tmp_path):
    """Real llama3-8b layer shapes (2 layers, dummy weights): hidden states of the replayed
    graphs against eager for sizes that hit captured sizes exactly and between them, of every
    token and of each request's last token only."""
    config = {**PRESETS["llama3-8b"], "num_hidden_layers": 2}
    (tmp_path / "config.json").write_text(json.dumps(config))
    runner = make_pcg_runner(str(tmp_path), "cuda", "bfloat16", attention_backend="triton",
                             load_format="dummy", piecewise_cuda_graph_max_tokens=1024)
    pcg = pcg_of(runner)
    pcg.state.check_addresses = True
    batches = MixedBatches(runner, vocab=config["vocab_size"])
    for total in (1, 3, 16, 17, 100, 256, 300, 1000, 1024):
        for batch in (batches.mixed(total), batches.new_prompt(total),
                      batches.mixed(total, all_logits=False),
                      batches.new_prompt(total, all_logits=False)):
            with torch.inference_mode():
                ours = pcg.replay(batch).clone()
                eager = runner.forward_eager(batch)
            rows = total if batch.return_all_logits else batch.batch_size
            assert ours.shape == eager.shape == (rows, config["hidden_size"])
            assert relative_error(ours, eager) < 2e-2, f"{total} tokens"
        batches.free()
