from __future__ import annotations

import pytest

from tessera.engine.detokenizer import IncrementalDetokenizer
from tessera.models.tokenizer import ByteTokenizer

TEXT = "héllo, 你好 wörld 🙂🎉 ok"


class CountingTokenizer(ByteTokenizer):
    """ByteTokenizer that records how many ids each decode call sees."""

    def __init__(self) -> None:
        super().__init__()
        self.window_sizes: list[int] = []

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        self.window_sizes.append(len(ids))
        return super().decode(ids, skip_special_tokens)


def stream(detok: IncrementalDetokenizer, ids: list[int], chunk: int = 1) -> list[str]:
    deltas = [detok.add(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
    return [*deltas, detok.flush()]


@pytest.mark.parametrize("chunk", [1, 2, 3, 5])
def test_multibyte_never_broken_mid_stream(chunk):
    tok = ByteTokenizer()
    ids = tok.encode(TEXT)
    assert len(ids) > len(TEXT)  # really split into bytes
    detok = IncrementalDetokenizer(tok, [], True)
    deltas = stream(detok, ids, chunk)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == detok.text == TEXT
    assert not detok.stopped and detok.stop_reason is None


def test_character_released_as_soon_as_complete():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, [], True)
    a, b, c = "你".encode()
    assert detok.add([a]) == ""
    assert detok.add([b]) == ""
    assert detok.add([c]) == "你"
    assert detok.add(list(b"x")) == "x"


@pytest.mark.parametrize("chunk", [1, 4])
def test_stop_string_split_across_tokens(chunk):
    tok = ByteTokenizer()
    ids = tok.encode("The answer</answer> is not shown")
    detok = IncrementalDetokenizer(tok, ["</answer>"], True)
    deltas = stream(detok, ids, chunk)
    assert "".join(deltas) == detok.text == "The answer"
    assert detok.stopped and detok.stop_reason == "</answer>"
    assert all("<" not in d for d in deltas)
    assert detok.add(tok.encode("more")) == "" and detok.flush() == ""


def test_possible_stop_prefix_held_back_then_released():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, ["STOP"], True)
    assert detok.add(tok.encode("abc ST")) == "abc "  # "ST" could begin "STOP"
    assert detok.add(tok.encode("O")) == ""
    assert detok.add(tok.encode("x")) == "STOx"   # it did not: released with the next text
    assert detok.add(tok.encode("ST")) == ""
    assert detok.flush() == "ST"  # the end came first: held text belongs to the output
    assert detok.text == "abc STOxST" and not detok.stopped


def test_earliest_stop_wins_and_multibyte_stop():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, ["world", "好", "o, "], True)
    deltas = stream(detok, tok.encode(TEXT), chunk=1)
    assert "".join(deltas) == detok.text == "héll"
    assert detok.stop_reason == "o, "
    detok = IncrementalDetokenizer(tok, ["你好"], True)
    assert "".join(stream(detok, tok.encode(TEXT))) == "héllo, "
    assert detok.stop_reason == "你好"


def test_stop_inside_one_large_add():
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, ["\n\n"], True)
    assert detok.add(tok.encode("line one\n\nline two")) == "line one"
    assert detok.stopped and detok.text == "line one"


def test_stop_found_in_text_released_by_flush():
    """Text held because it ends mid-character is still checked for stops when flushed."""
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, ["STOP"], True)
    assert detok.add(tok.encode("xSTOPy") + list("€".encode()[:2])) == ""
    assert detok.flush() == "x"
    assert detok.stopped and detok.stop_reason == "STOP" and detok.text == "x"


def test_invalid_utf8_is_not_held_forever():
    tok = ByteTokenizer()
    ids = [0x80] * 20 + list(b"ok")
    detok = IncrementalDetokenizer(tok, [], True)
    deltas = stream(detok, ids)
    assert "".join(deltas) == tok.decode(ids)  # same text a full decode gives
    assert sum(1 for d in deltas[:20] if d) > 0  # released during the run, not only at the end


def test_trailing_incomplete_character_flushed_like_full_decode():
    tok = ByteTokenizer()
    ids = tok.encode("ab") + list("€".encode()[:2])
    detok = IncrementalDetokenizer(tok, [], True)
    assert "".join(stream(detok, ids)) == tok.decode(ids) == "ab\ufffd"


def test_special_tokens():
    tok = ByteTokenizer()
    ids = tok.encode("hi<|im_end|>there")
    assert "".join(stream(IncrementalDetokenizer(tok, [], True), ids)) == "hithere"
    assert "".join(stream(IncrementalDetokenizer(tok, [], False), ids)) == "hi<|im_end|>there"
    detok = IncrementalDetokenizer(tok, ["<|im_end|>"], False)
    assert "".join(stream(detok, ids)) == "hi" and detok.stopped


def test_decodes_only_a_window():
    tok = CountingTokenizer()
    ids = tok.encode(TEXT * 50)
    detok = IncrementalDetokenizer(tok, ["never appears"], True)
    assert "".join(stream(detok, ids)) == TEXT * 50
    assert max(tok.window_sizes) <= 8, "decode cost must not grow with the output length"


def test_hf_byte_level_bpe(tmp_path):
    """A real byte-level BPE (trained here, offline) through tessera's HFTokenizer wrapper."""
    tokenizers = pytest.importorskip("tokenizers")
    from transformers import PreTrainedTokenizerFast

    from tessera.models.tokenizer import HFTokenizer

    bpe = tokenizers.Tokenizer(tokenizers.models.BPE())
    bpe.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["hello world, the answer is here. " * 20, "wörld héllo"], trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>").save_pretrained(
        str(tmp_path))
    tok = HFTokenizer(str(tmp_path))
    text = "hello wörld, 你好 🙂 the answer is here"
    ids = tok.encode(text)
    detok = IncrementalDetokenizer(tok, [], True)
    deltas = stream(detok, ids)
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == tok.decode(ids) == text
    detok = IncrementalDetokenizer(tok, ["answer"], True)
    assert "".join(stream(detok, ids)) == "hello wörld, 你好 🙂 the "
    assert detok.stop_reason == "answer"


def test_adds_that_keep_ending_mid_character_lose_nothing():
    """Regression: chunks that each end inside a character ("你a" "é" "🙂" here) held more than
    _MAX_HELD_TOKENS tokens; the forced release then broke the unfinished emoji into U+FFFD."""
    tok = ByteTokenizer()
    detok = IncrementalDetokenizer(tok, [], True)
    chunks = [[228, 189], [160, 97, 195], [169, 240], [159], [153, 130], [62]]
    deltas = [detok.add(c) for c in chunks] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas), deltas
    assert "".join(deltas) == "你aé🙂>"


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_equal_the_full_decode_cut_at_the_first_stop(seed):
    """Random text over multi-byte characters and stop-string pieces, sometimes with an invalid
    byte, streamed in random chunks: the deltas add up to the full decode cut before the earliest
    stop string, and `stopped` says whether one occurred."""
    import random

    rng = random.Random(seed)
    tok = ByteTokenizer()
    alphabet = ["a", "b", "<", "/", ">", "é", "你", "🙂", " ", "\n", "ab", "</a>"]
    for _ in range(300):
        ids = tok.encode("".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))))
        if ids and rng.random() < 0.2:
            ids.insert(rng.randrange(len(ids)), 0xFF)  # never valid in UTF-8
        stops = ["".join(rng.choice(alphabet[:6]) for _ in range(rng.randint(1, 3)))
                 for _ in range(rng.randint(0, 2))]
        full = tok.decode(ids)
        hits = [full.find(s) for s in stops if full.find(s) >= 0]
        expected = full[:min(hits)] if hits else full
        detok = IncrementalDetokenizer(tok, stops, True)
        deltas, i = [], 0
        while i < len(ids):
            n = rng.randint(1, 4)
            deltas.append(detok.add(ids[i:i + n]))
            i += n
        deltas.append(detok.flush())
        assert "".join(deltas) == detok.text == expected, (ids, stops)
        assert detok.stopped == bool(hits)
