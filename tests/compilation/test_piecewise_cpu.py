"""Piecewise-compiled backbone on the CPU (enforced: the same split and compiled pieces as on a GPU,
without capture) against eager, float32."""
from __future__ import annotations

import logging

import pytest
import torch
from hf_models import save_tiny_model
from pcg_helpers import MixedBatches, make_pcg_runner, pcg_and_eager_logits, pcg_of

from tessera.compilation.monitor import CompileMonitor, is_recompile_error
from tessera.compilation.splitting import op_qualname
from tessera.forward.batch import ForwardMode

MAX_TOKENS = 40  # sizes 2, 4, 8, 12, ..., 32, 40: fine and coarse steps, cheap on the CPU
ATOL = RTOL = 1e-5


@pytest.fixture(scope="module", params=["llama", "qwen3", "llama-triton"])
def runner(request, tmp_path_factory):
    """llama-triton: the triton attention backend (Triton's interpreter here): its prepared
    extend calls between the pieces, as on a GPU."""
    kind, _, backend = request.param.partition("-")
    if backend:
        pytest.importorskip("triton")
        if torch.cuda.is_available():
            pytest.skip("interpreter variant; test_piecewise_gpu.py runs the compiled kernels")
        from tessera.ops.triton.interpreter import patch_for_numpy_2_4

        patch_for_numpy_2_4()  # Triton 3.6's interpreter vs numpy >= 2.4
    path = save_tiny_model(str(tmp_path_factory.mktemp(request.param)), kind)
    return make_pcg_runner(path, piecewise_cuda_graph_max_tokens=MAX_TOKENS,
                           attention_backend=backend or "torch_native")


def test_split_has_a_piece_around_every_attention(runner):
    pcg = pcg_of(runner)
    layers = runner.model_config.num_hidden_layers
    pieces = pcg.backend.pieces
    # graph piece, attention, graph piece, attention, ..., graph piece
    assert [p.is_splitting for p in pieces] == [i % 2 == 1 for i in range(2 * layers + 1)]
    assert len(pcg.backend.graph_pieces) == layers + 1
    for piece in pieces:
        ops = [op_qualname(n.target) for n in piece.module.graph.nodes
               if n.op == "call_function"]
        if piece.is_splitting:
            assert ops == ["tessera::attention"]
        else:
            assert "tessera::attention" not in ops
    assert [g.is_last for g in pcg.backend.graph_pieces] == [False] * layers + [True]
    # every piece knows where its token count comes from (that picks the graph to replay)
    assert all(g.token_count is not None for g in pcg.backend.graph_pieces)
    # attention runs as a direct call of its Python function, not through the dispatcher
    split = pcg.backend.split_module
    assert all(split.__dict__[p.name].__name__ == "call_splitting_op"
               for p in pieces if p.is_splitting)


def test_logits_equal_eager_for_every_size_in_mixed_batches(runner, request):
    """Every token count from 1 to the largest size (captured sizes and those padded up to one),
    each a batch mixing decoding requests, an extend on a cached prefix and a new prompt: every
    token's logits (the trunk's pieces, then the last layer's MLP on every token), and only the
    next-token logits (that MLP on each request's last token only) against the whole model run
    eagerly on every token."""
    pcg = pcg_of(runner)
    assert pcg.capture_sizes == [2, 4, 8, 12, 16, 20, 24, 28, 32, 40]
    totals = list(range(1, MAX_TOKENS + 1))
    if request.node.callspec.params["runner"].endswith("triton"):
        # Triton's interpreter is slow: 1, then every captured size exactly and padded up from the
        # count below it (each size's graph and its padding, and every mix of request kinds:
        # 1-2 tokens no decoding request, 3-5 one, 6-8 two, 9+ three); the llama and qwen3
        # (torch_native) runners take every count.
        totals = sorted({1} | {s - d for s in pcg.capture_sizes for d in (0, 1)})
    refused, fallbacks = pcg.monitor.refused_recompiles, pcg.eager_fallbacks
    direct, dynamo = pcg.backbone.direct_calls, pcg.backbone.dynamo_calls
    batches = MixedBatches(runner)
    for total in totals:
        context = f"{total} tokens padded to {pcg.padded_size(total)}"
        ours, eager = pcg_and_eager_logits(runner, batches.mixed(total))
        assert ours.all_logits.shape == eager.all_logits.shape == (total,
                                                                  runner.model_config.vocab_size)
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL,
                                   msg=lambda m, c=context: f"{c}: {m}")
        torch.testing.assert_close(ours.next_token_logits, eager.next_token_logits, atol=ATOL,
                                   rtol=RTOL)
        batches.free()
        batch = batches.mixed(total, all_logits=False)
        ours, eager = pcg_and_eager_logits(runner, batch)
        assert ours.next_token_logits.shape == (batch.batch_size, runner.model_config.vocab_size)
        torch.testing.assert_close(ours.next_token_logits, eager.next_token_logits, atol=ATOL,
                                   rtol=RTOL, msg=lambda m, c=context: f"{c}, last tokens: {m}")
        batches.free()
    # one trace served every size: no recompile, no eager fallback
    assert pcg.monitor.compiles == 1
    assert (pcg.monitor.refused_recompiles, pcg.eager_fallbacks) == (refused, fallbacks)
    # after the trace, forwards call the compiled graph directly, past Dynamo's guards
    assert pcg.backend.direct is not None
    assert pcg.backbone.direct_calls == direct + 2 * len(totals)
    assert pcg.backbone.dynamo_calls == dynamo


def test_the_dynamo_path_gives_the_same_logits(runner, monkeypatch):
    """Through Dynamo's guards (what runs when a call does not look like the trace's)."""
    pcg = pcg_of(runner)
    monkeypatch.setattr(pcg.backend, "direct", None)
    dynamo = pcg.backbone.dynamo_calls
    batches = MixedBatches(runner)
    for total in (1, 5, 16, MAX_TOKENS):
        ours, eager = pcg_and_eager_logits(runner, batches.mixed(total))
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL)
        batches.free()
    assert pcg.backbone.dynamo_calls == dynamo + 4
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0


def test_only_extend_batches_that_fit_run_piecewise(runner):
    pcg = pcg_of(runner)
    batches = MixedBatches(runner)
    rows = batches.prefill([3, 3])
    decode = batches.build([(r, 1) for r in rows])
    assert pcg.can_run(decode)  # an EXTEND batch of decoding requests is still an extend batch
    decode.mode = ForwardMode.DECODE
    assert not pcg.can_run(decode)  # pure decode batches belong to the decode graph runner
    too_big = batches.build([(rows[0], MAX_TOKENS + 1)])
    assert not pcg.can_run(too_big)
    runner.forward(too_big)  # runs eagerly
    batches.free()


def test_refused_recompile_runs_the_batch_eagerly(runner, caplog):
    """A guard failure at run time (here: the static buffers turned int32) must not compile
    again: the batch runs eagerly with a warning, and later batches replay as before."""
    pcg = pcg_of(runner)
    batches = MixedBatches(runner)
    compiles, fallbacks = pcg.monitor.compiles, pcg.eager_fallbacks
    saved = pcg.input_ids, pcg.positions, pcg.out_cache_loc
    pcg.input_ids, pcg.positions, pcg.out_cache_loc = (b.to(torch.int32) for b in saved)
    try:
        batch = batches.mixed(7)
        with caplog.at_level(logging.WARNING, logger="tessera.compilation.monitor"):
            ours = runner.forward(batch)
        assert pcg.eager_fallbacks == fallbacks + 1
        assert "refused a Dynamo recompile" in caplog.text and "dtype mismatch" in caplog.text
    finally:
        pcg.input_ids, pcg.positions, pcg.out_cache_loc = saved
    _, eager = pcg_and_eager_logits(runner, batch)
    torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL)
    assert pcg.monitor.compiles == compiles  # refused, never compiled
    batches.free()


def test_monitor_counts_compiles_and_refuses_recompiles():
    monitor = CompileMonitor("toy")

    def backend(gm, example_inputs):
        monitor.on_compile()
        return gm.forward

    fn = torch.compile(lambda x: x * 2, backend=backend, dynamic=False)
    for _ in range(2):
        ok, out = monitor.call(fn, torch.ones(3))
        assert ok and out.tolist() == [2.0, 2.0, 2.0]
    assert monitor.compiles == 1
    ok, out = monitor.call(fn, torch.ones(3, dtype=torch.float64))  # dtype guard fails
    assert (ok, out) == (False, None) and monitor.refused_recompiles == 1
    with pytest.raises(ZeroDivisionError):  # real errors are not swallowed
        monitor.call(lambda: 1 / 0)
    from torch._dynamo.exc import FailOnRecompileLimitHit

    assert is_recompile_error(FailOnRecompileLimitHit("limit hit"))
    assert not is_recompile_error(RuntimeError("CUDA error: out of memory"))


def test_inductor_pieces_equal_eager(tmp_path):
    """The same with every piece compiled by inductor (C++ codegen on the CPU)."""
    path = save_tiny_model(str(tmp_path / "llama"), "llama")
    runner = make_pcg_runner(path, piecewise_cuda_graph_max_tokens=8,
                             piecewise_cuda_graph_compiler="inductor")
    pcg = pcg_of(runner)
    assert pcg.backend.compiler == "inductor"
    batches = MixedBatches(runner)
    for total in range(1, 9):
        ours, eager = pcg_and_eager_logits(runner, batches.mixed(total))
        torch.testing.assert_close(ours.all_logits, eager.all_logits, atol=ATOL, rtol=RTOL)
        batches.free()
    assert pcg.monitor.compiles == 1 and pcg.eager_fallbacks == 0
