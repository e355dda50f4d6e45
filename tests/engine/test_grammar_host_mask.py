"""XGrammarBackend.batch_bitmask: a batch's host mask from two persistent buffers used in turn,
rows without a grammar all ones, each filled row what the grammar allows (as a fresh mask)."""
from __future__ import annotations

import time

import pytest
import torch

xgrammar = pytest.importorskip("xgrammar")

from tessera.models.tokenizer import load_tokenizer
from tessera.scheduler.grammar import XGrammarBackend

VOCAB = 512


def ready(grammar):
    deadline = time.monotonic() + 60
    while not grammar.ready():
        assert time.monotonic() < deadline, "grammar compile did not finish"
        time.sleep(0.01)
    return grammar


def fresh(backend, rows, filled, grammars):
    """The same mask from xgrammar's own freshly allocated (all ones) bitmask."""
    mask = xgrammar.allocate_token_bitmask(rows, VOCAB)
    backend.fill_bitmask(mask, filled, grammars)
    return mask


def test_buffers_taken_in_turn_and_rows_reset():
    backend = XGrammarBackend(load_tokenizer("tiny-qwen3", VOCAB), VOCAB, [0])
    regex = ready(backend.request_grammar("regex", "[a-c]{3}"))
    schema = ready(backend.request_grammar("json_schema", '{"type": "integer"}'))
    first = backend.batch_bitmask(3, [0, 2], [regex, schema], pin=False)
    assert torch.equal(first, fresh(backend, 3, [0, 2], [regex, schema]))
    assert torch.all(first[1] == -1) and not torch.all(first[0] == -1)
    second = backend.batch_bitmask(3, [1], [regex], pin=False)
    assert second.data_ptr() != first.data_ptr()  # the other buffer: the first may be in flight
    assert torch.equal(second, fresh(backend, 3, [1], [regex]))
    third = backend.batch_bitmask(2, [], [], pin=False)  # the first buffer again, rows reset
    assert third.data_ptr() == first.data_ptr()
    assert third.shape == (2, (VOCAB + 31) // 32) and torch.all(third == -1)
    grown = backend.batch_bitmask(6, [5], [schema], pin=False)  # larger than the buffer: grows
    assert torch.equal(grown, fresh(backend, 6, [5], [schema]))
    backend.shutdown()
