"""Which token counts the piecewise graph captures: default list, explicit list, the TP rule."""
from __future__ import annotations

import itertools

import pytest

from tessera.compilation.capture_sizes import (
    MIN_TOKENS,
    attention_parallel_sizes,
    capture_sizes,
    default_capture_sizes,
    tokens_scattered,
)
from tessera.config import GraphConfig, ParallelConfig


def graph(max_tokens: int | None = 2048, tokens: list[int] | None = None) -> GraphConfig:
    return GraphConfig(piecewise_cuda_graph_max_tokens=max_tokens,
                       piecewise_cuda_graph_tokens=tokens)


def test_default_list_is_fine_below_32_and_bounded_above():
    sizes = default_capture_sizes(2048)
    assert sizes == sorted(set(sizes)) and sizes[0] == MIN_TOKENS == 2 and sizes[-1] == 2048
    assert [s for s in sizes if s <= 32] == [2, 4, 8, 12, 16, 20, 24, 28, 32]
    # above 32 a padded batch wastes at most 25% of its tokens: next size <= 1.25 x previous
    above = [s for s in sizes if s >= 32]
    assert all(b <= a * 1.25 for a, b in itertools.pairwise(above))
    assert {64, 128, 256, 512, 1024} <= set(sizes)
    assert len(sizes) == 33  # capture cost grows with the log of the max, not linearly


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 33, 100, 2048, 3000, 8192])
def test_default_list_is_clipped_to_the_max_and_contains_it(max_tokens):
    sizes = default_capture_sizes(max_tokens)
    assert sizes[-1] == max(max_tokens, MIN_TOKENS)  # full chunked-prefill chunks never pad
    assert all(MIN_TOKENS <= s <= max(max_tokens, MIN_TOKENS) for s in sizes)
    # every token count up to the max has a size within 25% above it (or a fine step below 32)
    for n in range(1, max_tokens + 1):
        padded = min(s for s in sizes if s >= n)
        assert padded - n <= max(4, n // 4)


def test_max_tokens_must_be_positive():
    with pytest.raises(ValueError, match="piecewise-cuda-graph-max-tokens"):
        default_capture_sizes(0)


def test_explicit_list_replaces_the_default_as_given():
    assert capture_sizes(graph(64, [96, 8, 8, 1]), ParallelConfig()) == [2, 8, 96]
    with pytest.raises(ValueError, match="positive"):
        capture_sizes(graph(64, [4, 0]), ParallelConfig())


def test_attention_tp_is_the_whole_tp_group_without_dp_attention():
    # --moe-dense-tp-size 1 shards the dense MLPs, not attention: attention TP stays tp_size
    assert attention_parallel_sizes(ParallelConfig(tp_size=4, moe_dense_tp_size=1)) == (4, 1)
    assert attention_parallel_sizes(ParallelConfig(tp_size=8), attn_dp_size=2) == (4, 1)
    with pytest.raises(ValueError):
        attention_parallel_sizes(ParallelConfig(tp_size=6), attn_dp_size=4)


@pytest.mark.parametrize("tp,dense,scattered", [(1, 1, False), (4, 1, True), (4, None, False),
                                                (4, 4, False), (2, 1, True)])
def test_tokens_scattered_only_with_dense_tp_1_and_attention_tp(tp, dense, scattered):
    assert tokens_scattered(ParallelConfig(tp_size=tp, moe_dense_tp_size=dense)) is scattered


def test_scattered_tokens_keep_multiples_of_attn_tp():
    sizes = capture_sizes(graph(256), ParallelConfig(tp_size=8, moe_dense_tp_size=1))
    assert sizes and all(s % 8 == 0 for s in sizes)
    assert sizes == [s for s in default_capture_sizes(256) if s % 8 == 0]
    # without scattering (dense TP = TP) every size stays
    assert capture_sizes(graph(256), ParallelConfig(tp_size=8)) == default_capture_sizes(256)


def test_scattered_tokens_multiply_by_cp_when_tp_is_not_a_multiple():
    parallel = ParallelConfig(tp_size=4, moe_dense_tp_size=1)
    # attn_tp 4 is a multiple of cp 2: multiples of 4
    assert capture_sizes(graph(64), parallel, attn_cp_size=2) == [
        s for s in default_capture_sizes(64) if s % 4 == 0]
    # attn_tp 4 is not a multiple of cp 3: multiples of 12
    assert capture_sizes(graph(None, [12, 16, 24, 36, 40]), parallel, attn_cp_size=3) == [
        12, 24, 36]


def test_no_size_left_is_a_clear_error():
    parallel = ParallelConfig(tp_size=3, moe_dense_tp_size=1)
    with pytest.raises(ValueError, match="multiple of 3") as info:
        capture_sizes(graph(64, [2, 4, 8]), parallel)
    assert "--piecewise-cuda-graph-tokens" in str(info.value)
