"""tessera::apply_token_bitmask (the grammar mask before sampling) against its definition.

The torch reference is checked against xgrammar's own masking on random masks; the Triton kernel
(CPU: through the interpreter at small sizes; GPU: qwen3's vocabulary) against the reference; the
custom op inside torch.compile(fullgraph=True) against eager.
"""
from __future__ import annotations

import pytest
import torch

from tessera.ops.bitmask import (
    apply_token_bitmask,
    apply_token_bitmask_reference,
    bitmask_words,
    unpack_bitmask,
)


def random_case(rows: int, vocab: int, device: str, seed: int, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g).to(dtype)
    bitmask = torch.randint(-2**31, 2**31 - 1, (rows, bitmask_words(vocab)), generator=g,
                            dtype=torch.int64).to(torch.int32)
    if rows > 1:
        bitmask[1] = -1  # a row without a grammar: unchanged
    if rows > 2:
        bitmask[2] = 0
        bitmask[2, 0] = 1 << 5  # exactly one allowed token
    return logits.to(device), bitmask.to(device)


@pytest.mark.parametrize(("rows", "vocab"), [(1, 1), (3, 31), (4, 33), (5, 512), (3, 1000)])
def test_reference_matches_xgrammar(rows, vocab):
    xgr = pytest.importorskip("xgrammar")
    logits, bitmask = random_case(rows, vocab, "cpu", rows * 7 + vocab)
    expected = logits.clone()
    xgr.apply_token_bitmask_inplace(expected, bitmask, backend="torch_native")
    assert torch.equal(apply_token_bitmask_reference(logits, bitmask), expected)
    if rows > 2:
        assert unpack_bitmask(bitmask, vocab)[2].nonzero().flatten().tolist() == \
            ([5] if vocab > 5 else [])


@pytest.mark.parametrize(("rows", "vocab"), [(1, 7), (3, 300), (2, 4096 + 37)])
def test_triton_kernel_matches_reference(device, rows, vocab):
    pytest.importorskip("triton")
    from tessera.ops.triton.bitmask import apply_token_bitmask as kernel

    for dtype in (torch.float32, torch.bfloat16):
        logits, bitmask = random_case(rows, vocab, device, vocab + rows, dtype)
        assert torch.equal(kernel(logits, bitmask), apply_token_bitmask_reference(logits,
                                                                                   bitmask))


def test_custom_op_under_torch_compile():
    logits, bitmask = random_case(4, 300, "cpu", 1)

    def masked_softmax(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.ops.tessera.apply_token_bitmask(x * 2.0, m), dim=-1)

    compiled = torch.compile(masked_softmax, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(logits, bitmask), masked_softmax(logits, bitmask))
    assert torch.equal(apply_token_bitmask(logits, bitmask),
                       apply_token_bitmask_reference(logits, bitmask))


@pytest.mark.gpu
def test_gpu_qwen3_vocab_batch_32():
    logits, bitmask = random_case(32, 151936, "cuda", 0, torch.bfloat16)
    out = torch.ops.tessera.apply_token_bitmask(logits, bitmask)
    assert torch.equal(out, apply_token_bitmask_reference(logits, bitmask))
