"""bench_pcg's batch helper on the CPU: what every prefill benchmark times."""
from __future__ import annotations

import pytest
import torch

from tessera.bench.pcg import build_runner, prefill_batch, time_prefill


@pytest.fixture(scope="module")
def runner():
    runner, _ = build_runner("tiny-qwen3", 16, False, "eager", "cpu")
    return runner


def test_prefill_batch_allocates_and_frees(runner):
    slots_before = runner.allocator.available_size()
    rows_before = runner.req_to_token_pool.available_size()
    with prefill_batch(runner, 12) as batch:
        assert batch.num_tokens == 12 and batch.extend_seq_lens_cpu == [12]
        row = int(batch.req_pool_indices[0])
        table = runner.req_to_token_pool.req_to_token[row, :12]
        assert torch.equal(table.long(), batch.out_cache_loc)
        assert runner.allocator.available_size() == slots_before - 12
        ids = batch.input_ids.tolist()
    assert runner.allocator.available_size() == slots_before
    assert runner.req_to_token_pool.available_size() == rows_before
    with prefill_batch(runner, 12) as again:  # random ids, the same for a length every time
        assert again.input_ids.tolist() == ids and len(set(ids)) > 1
    with prefill_batch(runner, 12, "constant") as constant:
        assert constant.input_ids.tolist() == [5] * 12
    with pytest.raises(ValueError, match="random or constant"), prefill_batch(runner, 4, "x"):
        pass
    assert runner.allocator.available_size() == slots_before


def test_time_prefill_reports_and_frees(runner):
    slots_before = runner.allocator.available_size()
    timed = time_prefill(runner, 8, warmup=1, repeat=2)
    assert timed["ms"]["n"] == 2 and timed["path"] == "eager"
    assert timed["logits"].shape == (1, runner.model_config.vocab_size)
    assert runner.allocator.available_size() == slots_before
