"""Request preparation (tessera/server/prepare.py): the byte-length bound never refuses a prompt
that fits, and the worker pool returns what preparing in place returns, errors included."""
from __future__ import annotations

import asyncio
import json
import math
import random

import pytest

from tessera.models.tokenizer import ByteTokenizer
from tessera.server.errors import APIError
from tessera.server.prepare import (
    INLINE_BODY_BYTES,
    PreparePool,
    TokenizerSpec,
    max_token_bytes,
    prepare,
    remember_tokenizer,
)

_PIECES = ["hello", " world", "wörld", "你好", "🙂", "<|im_end|>", "<|endoftext|>", " ", "\n",
           "=" * 40, "a" * 33, "Ａ", "𝐀"]


def _texts(seed: int, count: int = 50) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 60))) for _ in range(count)]


def _check_bound(tok, texts: list[str]) -> None:
    per_token = max_token_bytes(tok)
    assert per_token is not None and per_token >= 1
    for text in texts:
        lower = math.ceil(len(text.encode()) / per_token)
        assert len(tok.encode(text)) >= lower, (text, per_token)


def test_byte_bound_holds_for_the_byte_tokenizer():
    tok = ByteTokenizer()
    _check_bound(tok, _texts(0) + ["<|endoftext|>" * 100])
    assert max_token_bytes(tok) == len("<|endoftext|>")


@pytest.mark.parametrize("kind", ["byte_level", "metaspace_nfkc"])
def test_byte_bound_holds_for_hf_tokenizers(tmp_path, kind):
    """Trained here (offline) on the very texts, so long merges (runs of '=' and 'a') exist."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    from tessera.models.tokenizer import HFTokenizer

    pt, dec = tokenizers.pre_tokenizers, tokenizers.decoders
    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    if kind == "byte_level":
        bpe.pre_tokenizer = pt.ByteLevel(add_prefix_space=False)
        bpe.decoder = dec.ByteLevel()
        alphabet = pt.ByteLevel.alphabet()
    else:  # SentencePiece-style: "▁" for spaces, NFKC folds "Ａ" / "𝐀" (3, 4 bytes) into "A"
        bpe.normalizer = tokenizers.normalizers.NFKC()
        bpe.pre_tokenizer = pt.Metaspace()
        bpe.decoder = dec.Metaspace()
        alphabet = []
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                             initial_alphabet=alphabet)
    texts = _texts(1)
    bpe.train_from_iterator(texts * 5, trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(
        str(tmp_path))
    _check_bound(HFTokenizer(str(tmp_path)), texts + _texts(2))


SPEC = TokenizerSpec(None, 512, ())


def _body(prompt: str) -> bytes:
    return json.dumps({"prompt": prompt, "max_tokens": 2}).encode()


def test_prepare_refuses_by_bytes_only_where_that_is_decisive():
    remember_tokenizer(SPEC, ByteTokenizer(512))
    # 13 bytes per token at most: 40 bytes are at least 4 tokens, 39 bytes at least 3
    assert prepare("completions", _body("a" * 39), SPEC, 4).prompts == [[97] * 39]
    with pytest.raises(APIError) as e:
        prepare("completions", _body("a" * 40), SPEC, 4)
    assert e.value.status == 400 and e.value.param == "prompt"
    assert "at least 4 tokens" in e.value.message
    # specials pack 13 bytes into one token: the bound must let these through
    ids = prepare("completions", _body("<|endoftext|>" * 3), SPEC, 4).prompts
    assert ids == [[256, 256, 256]]


def test_the_pool_prepares_large_bodies_like_in_place():
    big = "b" * (INLINE_BODY_BYTES * 2)
    chat = json.dumps({"messages": [{"role": "user", "content": big}]}).encode()

    async def run() -> tuple:
        pool = PreparePool(1)
        try:
            ok = await pool.run("chat", chat, SPEC, 100_000)
            with pytest.raises(APIError) as refused:
                await pool.run("completions", _body(big), SPEC, 1000)
            with pytest.raises(APIError) as invalid:
                await pool.run("completions", _body(big)[:-1], SPEC, 100_000)
            return ok, refused.value, invalid.value
        finally:
            pool.shutdown()

    ok, refused, invalid = asyncio.run(run())
    assert ok.prompts == prepare("chat", chat, SPEC, 100_000).prompts
    assert ok.request.messages[0].content == big
    assert (refused.status, refused.param) == (400, "prompt")
    assert invalid.status == 400 and invalid.code == "invalid_json"
