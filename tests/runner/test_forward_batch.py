"""ForwardBatch.build: every field from the one packed copy (int64 fields, then the int32
lengths in the bytes after them), for extend and decode batches, ids from the host or already a
tensor; and ModelRunner.compute_logits taking each request's last new token through it."""
from __future__ import annotations

import pytest
import torch

from tessera.forward.batch import ForwardBatch, ForwardMode


def _check(fb: ForwardBatch, ids, rows, prefix, extend) -> None:
    positions = [p + i for p, e in zip(prefix, extend) for i in range(e)]
    starts = [sum(extend[:i]) for i in range(len(extend))]
    assert fb.input_ids.dtype == torch.int64 and fb.input_ids.tolist() == list(ids)
    assert fb.positions.tolist() == positions
    assert fb.req_pool_indices.dtype == torch.int64 and fb.req_pool_indices.tolist() == rows
    for field, want in ((fb.seq_lens, [p + e for p, e in zip(prefix, extend)]),
                        (fb.extend_prefix_lens, prefix), (fb.extend_seq_lens, extend),
                        (fb.extend_start_loc, starts)):
        assert field.dtype == torch.int32 and field.tolist() == want
    assert fb.seq_lens_cpu == [p + e for p, e in zip(prefix, extend)]
    assert fb.max_extend_len == max(extend, default=0)
    if fb.mode is ForwardMode.DECODE:
        assert fb.last_token_loc is None  # the logits take rows 0..B-1
    else:  # each request's last new token: where its next-token logits come from
        assert fb.last_token_loc.dtype == torch.int64
        assert fb.last_token_loc.tolist() == [s + e - 1 for s, e in zip(starts, extend)]


@pytest.mark.parametrize("rows,prefix,extend", [
    ([3], [0], [5]),                        # one prefill
    ([0, 7, 2], [4, 0, 2 ** 31 - 10], [3, 1, 2]),  # odd batch size, a length near int32's max
    ([1, 2], [10, 20], [1, 1]),
])
def test_extend_batch_fields(rows, prefix, extend):
    t = sum(extend)
    ids = list(range(100, 100 + t))
    slots = torch.arange(t, dtype=torch.int32)
    fb = ForwardBatch.build(ForwardMode.EXTEND, ids, rows, prefix, extend, slots, "cpu")
    _check(fb, ids, rows, prefix, extend)
    assert fb.out_cache_loc.dtype == torch.int64 and fb.out_cache_loc.tolist() == list(range(t))
    assert fb.decode_inputs is None
    # ids already a tensor: the same fields
    fb = ForwardBatch.build(ForwardMode.EXTEND, torch.tensor(ids), rows, prefix, extend,
                            slots.long(), "cpu")
    _check(fb, ids, rows, prefix, extend)


def test_decode_batch_views_share_the_input_ids():
    rows, prefix = [5, 6, 9], [11, 12, 13]
    fb = ForwardBatch.build(ForwardMode.DECODE, [0, 0, 0], rows, prefix, [1, 1, 1],
                            torch.arange(3), "cpu")
    _check(fb, [0, 0, 0], rows, prefix, [1, 1, 1])
    assert fb.decode_inputs.tolist() == [prefix, rows, [0, 0, 0]]
    fb.fill_input_ids([0, 1, 2], torch.tensor([7, 8, 9]), [0, 1, 2])
    assert fb.input_ids.tolist() == [7, 8, 9] and fb.decode_inputs[2].tolist() == [7, 8, 9]


def test_logit_rows_are_each_requests_last_token():
    """The rows of last_token_loc (built on the host) and the lengths' arithmetic (the fallback
    when a batch has no last_token_loc) pick the same rows: what the forward finishes
    (LlamaModel.finish) and the LM head reads. With every token's logits asked for, the forward
    gives all rows and compute_logits picks the same ones."""
    from types import SimpleNamespace

    from tessera.runner.model_runner import ModelRunner

    extend = [3, 1, 4]
    fb = ForwardBatch.build(ForwardMode.EXTEND, list(range(8)), [0, 1, 2], [0, 5, 2], extend,
                            torch.arange(8), "cpu")
    assert fb.logit_rows().tolist() == [2, 3, 7]
    runner = SimpleNamespace(model=SimpleNamespace(compute_logits=lambda h: h * 2))
    finished = torch.randn(3, 6)  # the forward's rows: already the last tokens
    assert torch.equal(ModelRunner.compute_logits(runner, finished, fb).next_token_logits,
                       finished * 2)
    fb.return_all_logits = True
    assert fb.logit_rows() is None
    hidden = torch.randn(8, 6)
    out = ModelRunner.compute_logits(runner, hidden, fb)
    assert torch.equal(out.next_token_logits, hidden[[2, 3, 7]] * 2)
    assert torch.equal(out.all_logits, hidden * 2)
    fb.last_token_loc = None
    assert torch.equal(ModelRunner.compute_logits(runner, hidden, fb).next_token_logits,
                       out.next_token_logits)
    fb.return_all_logits = False
    assert fb.logit_rows().tolist() == [2, 3, 7]
    decode = ForwardBatch.build(ForwardMode.DECODE, [1, 2], [0, 1], [4, 5], [1, 1],
                                torch.arange(2), "cpu")
    assert decode.logit_rows() is None


def test_extend_batch_rejects_a_request_without_new_tokens():
    """Its next-token logits would come from another request's row: the scheduler never builds
    one (it leaves at least one token uncached), and build refuses it."""
    with pytest.raises(AssertionError, match="no new token"):
        ForwardBatch.build(ForwardMode.EXTEND, [1, 2], [0, 1], [0, 4], [2, 0], torch.arange(2),
                           "cpu")
