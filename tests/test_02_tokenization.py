"""Lesson 02: minillm.tokenizer (CharTokenizer, BPETokenizer), against hand-checked cases
and a straightforward recount-every-merge reference trainer."""
import hashlib
import json
import os
import random
import string
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import minillm.tokenizer
from exercise_tools import assert_checks_work
from minillm.corpus import tiny_shakespeare
from minillm.tokenizer import (GPT2_SPLIT_PATTERN, BPETokenizer, CharTokenizer, load_tokenizer, merge,
                               pair_counts, tokenizer_from_dict, train_merges)

import regex


@pytest.fixture(scope="module")
def shakespeare():
    return tiny_shakespeare(offline=True)


@pytest.fixture(scope="module")
def trained(shakespeare):
    return BPETokenizer().train(shakespeare[:200_000], 512)


def reference_merges(text: str, vocab_size: int, pattern=GPT2_SPLIT_PATTERN) -> list[tuple[int, int]]:
    """The textbook trainer: recount every pair after every merge (slow, obviously right).
    Same tie-break as minillm: most frequent, then the smallest pair."""
    chunks = regex.findall(pattern, text) if pattern else [text]
    words = [list(c.encode("utf-8")) for c in chunks]
    merges = []
    for new_id in range(256, vocab_size):
        counts = Counter()
        for w in words:
            counts.update(zip(w, w[1:]))
        if not counts:
            break
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        words = [merge(w, best, new_id) for w in words]
    return merges


# ------------------------------------------------------------------ CharTokenizer

def test_char_tokenizer_round_trip():
    tok = CharTokenizer("hello")
    assert tok.chars == ["e", "h", "l", "o"] and tok.vocab_size == 4
    assert tok.encode("hello") == [1, 0, 2, 2, 3] and tok.decode([1, 0, 2, 2, 3]) == "hello"


def test_char_tokenizer_errors_name_the_culprit():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match=r"character 'z' \(U\+007A\) at position 2 is not in .* 3 characters"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="invalid token id: 3 .*0 to 2"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="invalid token id: -1"):
        tok.decode([-1])
    with pytest.raises(ValueError, match="non-empty text"):
        CharTokenizer("")


def test_char_tokenizer_save_load(tmp_path, shakespeare):
    tok = CharTokenizer(shakespeare)
    tok.save(tmp_path / "chars.json")
    again = CharTokenizer.load(tmp_path / "chars.json")
    assert again.chars == tok.chars and isinstance(load_tokenizer(tmp_path / "chars.json"), CharTokenizer)


# ------------------------------------------------------------------ BPE: the building blocks

def test_pair_counts_and_merge_docstring_examples():
    assert pair_counts([1, 2, 3, 1, 2]) == {(1, 2): 2, (2, 3): 1, (3, 1): 1}
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([5, 5, 5], (5, 5), 9) == [9, 5] and merge([], (1, 2), 3) == []


def test_wikipedia_example():
    for pattern in (None, GPT2_SPLIT_PATTERN):
        tok = BPETokenizer(pattern=pattern).train("aaabdaaabac", 256 + 3)
        assert tok.encode("aaabdaaabac") == [258, 100, 258, 97, 99]
        assert list(tok.merges) == [(97, 97), (97, 98), (256, 257)]
        assert tok.token_bytes(258) == b"aaab"


def test_train_merges_docstring_example_and_weights():
    assert train_merges({"aaabdaaabac": 1}, 3) == [(97, 97), (97, 98), (256, 257)]
    # chunk weights count: " the" x50 outweighs "ab" x10 although "ab" has more pairs per chunk
    assert train_merges({"abababab": 10, " the": 50}, 1) == [(32, 116)]


def test_pre_split_keeps_merges_inside_chunks():
    text = "the cat. the hat. the bat."
    tok = BPETokenizer().train(text, 300)
    assert all(b"." not in tok.token_bytes(i) or tok.token_bytes(i).strip(b".") == b"" for i in tok.merges.values())
    assert all(not tok.token_bytes(i).endswith(b" ") for i in tok.merges.values())   # a space only leads


# ------------------------------------------------------------------ BPE: training is right and fast

def test_incremental_training_equals_recounting(shakespeare):
    text = shakespeare[:20_000]
    assert list(BPETokenizer().train(text, 400).merges) == reference_merges(text, 400)
    assert list(BPETokenizer(pattern=None).train(text[:3000], 300).merges) == reference_merges(text[:3000], 300, None)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="ab c\nd", max_size=60), st.integers(256, 300))
def test_incremental_training_equals_recounting_on_any_text(text, vocab_size):
    assert list(BPETokenizer().train(text, vocab_size).merges) == reference_merges(text, vocab_size)


def test_training_stops_when_pairs_run_out():
    tok = BPETokenizer().train("ab ab", 1000)
    assert tok.vocab_size < 1000 and tok.encode("ab ab") == [256, 257]


def test_training_rejects_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size must be an integer of at least 256.*got 100"):
        BPETokenizer().train("text", 100)
    with pytest.raises(ValueError, match="already has merges"):
        BPETokenizer([(97, 98)]).train("text", 300)


# ------------------------------------------------------------------ BPE: encode and decode

@settings(max_examples=300, deadline=None)
@given(st.text())
def test_any_unicode_text_round_trips(trained, text):   # st.text() holds no lone surrogates
    assert trained.decode(trained.encode(text)) == text


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40))
def test_untrained_tokenizer_is_plain_utf8(text):
    tok = BPETokenizer()
    assert tok.encode(text) == list(text.encode("utf-8"))


def test_encode_matches_the_merge_definition(trained, shakespeare):
    """Encoding a chunk = apply merges by rank, lowest first, until none applies."""
    for chunk in regex.findall(GPT2_SPLIT_PATTERN, shakespeare[300_000:302_000]):
        ids = list(chunk.encode("utf-8"))
        while True:
            ranked = [p for p in zip(ids, ids[1:]) if p in trained.merges]
            if not ranked:
                break
            best = min(ranked, key=trained.merges.get)
            ids = merge(ids, best, trained.merges[best])
        assert trained.encode(chunk) == ids


def test_decode_errors_and_partial_characters(trained):
    with pytest.raises(ValueError, match=f"invalid token id: 9999 .*0 to {trained.vocab_size - 1}"):
        trained.decode([9999])
    assert trained.decode([0xE2, 0x82]) == "\ufffd"            # a cut-off '€' decodes, it does not crash
    with pytest.raises(TypeError, match="takes a str, got bytes"):
        trained.encode(b"bytes")


def test_special_tokens(trained):
    tok = BPETokenizer(list(trained.merges), special_tokens=["<|endoftext|>", "<|pad|>"])
    eot, pad = trained.vocab_size, trained.vocab_size + 1
    assert tok.special_tokens == {"<|endoftext|>": eot, "<|pad|>": pad} and tok.vocab_size == eot + 2
    text = "Exeunt.<|endoftext|>ACT II<|pad|>"
    ids = tok.encode(text, allowed_special="all")
    assert ids.count(eot) == 1 and ids.count(pad) == 1 and tok.decode(ids) == text
    assert eot not in tok.encode(text, allowed_special="none") and tok.decode(tok.encode(text, allowed_special="none")) == text
    only_eot = tok.encode(text, allowed_special={"<|endoftext|>"})
    assert eot in only_eot and pad not in only_eot
    with pytest.raises(ValueError, match="contains the special token '<\\|endoftext\\|>'"):
        tok.encode(text)
    with pytest.raises(ValueError, match="does not have"):
        tok.encode(text, allowed_special={"<|unknown|>"})
    with pytest.raises(ValueError, match="add merges before special tokens"):
        tok._add_merge((97, 98))


# ------------------------------------------------------------------ BPE: save and load

def test_save_load_round_trip(tmp_path, trained):
    tok = BPETokenizer(list(trained.merges), special_tokens=["<|endoftext|>"])
    tok.save(tmp_path / "tok.json")
    again = BPETokenizer.load(tmp_path / "tok.json")
    assert again.merges == tok.merges and again.special_tokens == tok.special_tokens and again.pattern == tok.pattern
    sample = "But, soft! what light<|endoftext|>"
    assert again.encode(sample, allowed_special="all") == tok.encode(sample, allowed_special="all")
    assert json.loads((tmp_path / "tok.json").read_text())["version"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["tok.json"]        # no temporary file left
    assert tokenizer_from_dict(tok.to_dict()).merges == tok.merges


@pytest.mark.parametrize("damage, message", [
    (lambda text: text[: len(text) // 2], "not a readable tokenizer file"),
    (lambda text: "[1, 2, 3]", "holds a JSON list"),
    (lambda text: json.dumps({"format": "something-else", "version": 1}), "its format is 'something-else'"),
    (lambda text: text.replace('"version": 2', '"version": 99'), "version 99"),
    (lambda text: text.replace("[", "[7000, ", 2), "merges"),
    (lambda text: text.replace('"merges": [', '"merges": [[300, 301], ', 1), "does not exist yet"),
    (lambda text: text.replace('"pattern": "', '"pattern": "(', 1), "'pattern' .*'\\(gpt2'"),
])
def test_damaged_files_are_refused(tmp_path, trained, damage, message):
    path = tmp_path / "tok.json"
    trained.save(path)
    path.write_text(damage(path.read_text()))
    with pytest.raises(ValueError, match=message) as e:
        BPETokenizer.load(path)
    assert str(path) in str(e.value)


def test_load_checks_the_kind(tmp_path):
    CharTokenizer("abc").save(tmp_path / "chars.json")
    with pytest.raises(ValueError, match="holds a CharTokenizer, not a BPETokenizer"):
        BPETokenizer.load(tmp_path / "chars.json")


def test_save_is_atomic(tmp_path, trained, monkeypatch):
    path = tmp_path / "tok.json"
    BPETokenizer().save(path)
    before = path.read_text()
    def crash(src, dst):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        trained.save(path)
    assert path.read_text() == before and [p.name for p in tmp_path.iterdir()] == ["tok.json"]


# ------------------------------------------------------------------ hardening: a file must not choose code

CRAFTED = "(a|aa)+$"    # catastrophic backtracking: the time to match "aaa...a!" grows exponentially


def test_a_saved_tokenizer_names_its_pattern(tmp_path, trained):
    data = trained.to_dict()
    assert data["version"] == 2 and data["pattern"] == "gpt2" and "custom_pattern" not in data
    assert BPETokenizer(pattern=None).to_dict()["pattern"] is None
    trained.save(tmp_path / "tok.json")
    assert json.loads((tmp_path / "tok.json").read_text())["pattern"] == "gpt2"
    assert BPETokenizer.load(tmp_path / "tok.json").pattern == GPT2_SPLIT_PATTERN
    assert CharTokenizer("abc").to_dict()["version"] == 2


def test_version_1_files_still_load(tmp_path, trained):
    """Version 1 stored the regex itself: the GPT-2 regex (or null) loads as before."""
    for pattern in (GPT2_SPLIT_PATTERN, None):
        path = tmp_path / "old.json"
        path.write_text(json.dumps({"format": "minillm-bpe-tokenizer", "version": 1, "pattern": pattern,
                                    "merges": [list(p) for p in trained.merges], "special_tokens": {"<|endoftext|>": 512}}))
        tok = BPETokenizer.load(path)
        assert tok.pattern == pattern and tok.merges == trained.merges and tok.special_tokens == {"<|endoftext|>": 512}
    assert tokenizer_from_dict({"format": "minillm-char-tokenizer", "version": 1, "chars": "abc"}).chars == ["a", "b", "c"]


@pytest.mark.parametrize("fields, field, value", [
    ({"version": 1, "pattern": CRAFTED}, "pattern", CRAFTED),                          # a version-1 file, crafted
    ({"pattern": CRAFTED}, "pattern", CRAFTED),                                          # a regex where a name belongs
    ({"pattern": "custom", "custom_pattern": CRAFTED}, "custom_pattern", CRAFTED),       # a custom regex, not allowed
    ({"pattern": "custom", "custom_pattern": 7}, "custom_pattern", 7),
    ({"pattern": "gpt2" * 100}, "pattern", "gpt2" * 100),                                # a long value is cut short
    ({"pattern": ["gpt2"]}, "pattern", ["gpt2"]),
])
def test_a_file_cannot_choose_the_pre_split_regex(tmp_path, trained, monkeypatch, fields, field, value):
    compiled = []
    compile_regex = regex.compile
    monkeypatch.setattr(regex, "compile", lambda p, *a, **k: (compiled.append(p), compile_regex(p, *a, **k))[1])
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({**trained.to_dict(), **fields}))
    for load in (BPETokenizer.load, load_tokenizer, lambda p: tokenizer_from_dict(json.loads(p.read_text()))):
        with pytest.raises(ValueError, match=f"'{field}'") as e:
            load(path)
        message = str(e.value)
        assert repr(value)[:40] in message and "\n" not in message and len(message) < 400, message
    assert value not in compiled                                   # refused before it could run


def test_a_custom_pattern_is_saved_but_loads_only_when_allowed(tmp_path):
    custom = r"\w+|\s+|[^\w\s]+"
    tok = BPETokenizer(pattern=custom).train("to be, or not to be, that is the question", 270)
    data = tok.to_dict()
    assert data["pattern"] == "custom" and data["custom_pattern"] == custom
    with pytest.raises(ValueError, match="allow_custom_pattern=True"):
        tokenizer_from_dict(data)
    assert tokenizer_from_dict(data, allow_custom_pattern=True).encode("to be") == tok.encode("to be")
    tok.save(tmp_path / "tok.json")
    for load in (BPETokenizer.load, load_tokenizer):
        with pytest.raises(ValueError, match="'custom_pattern'"):
            load(tmp_path / "tok.json")
        again = load(tmp_path / "tok.json", allow_custom_pattern=True)
        assert again.pattern == custom and again.merges == tok.merges
    with pytest.raises(ValueError, match="missing \\)"):                  # even allowed, a broken regex is refused
        tokenizer_from_dict({**data, "custom_pattern": "("}, allow_custom_pattern=True)


# ------------------------------------------------------------------ hardening: what encode and decode accept

@pytest.mark.parametrize("bad", [3.0, "3", True, None, np.float32(3), np.bool_(True),
                                 torch.tensor(3.0), torch.tensor(True), torch.tensor([3])])
def test_decode_refuses_ids_that_are_not_integers(trained, bad):
    for tok in (CharTokenizer("abcdef"), trained):
        with pytest.raises(TypeError, match="position 1 must be an integer, got " + regex.escape(repr(bad))):
            tok.decode([0, bad, 2])


def test_decode_refuses_a_string_bytes_and_float_tensors(trained):
    for tok in (CharTokenizer("abcdef"), trained):
        for bad in ("abc", b"abc"):
            with pytest.raises(TypeError, match=f"decode\\(\\) takes a sequence of integer token ids, got {type(bad).__name__}"):
                tok.decode(bad)
        with pytest.raises(TypeError, match="position 0 must be an integer, got 0.0"):
            tok.decode(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="invalid token id: 7 at position 2"):
        CharTokenizer("abc").decode([0, 1, 7])


def test_decode_takes_ints_numpy_integers_and_integer_tensors(trained):
    for tok in (CharTokenizer("abcdef"), trained):
        expected = tok.decode([0, 1, 2])
        for ids in ([np.int64(0), np.int32(1), np.uint8(2)], np.array([0, 1, 2]), torch.tensor([0, 1, 2]),
                    list(torch.tensor([0, 1, 2])), torch.tensor([[0, 1, 2]])[0], (i for i in [0, 1, 2]), range(3)):
            assert tok.decode(ids) == expected
    assert trained.token_bytes(np.int64(101)) == trained.token_bytes(torch.tensor(101)) == b"e"
    with pytest.raises(TypeError, match="must be an integer, got 1.0"):
        trained.token_bytes(1.0)


def test_encode_wants_a_str(trained):
    special = BPETokenizer(list(trained.merges), special_tokens=["<|endoftext|>"])
    encoders = [CharTokenizer("abc").encode, trained.encode, trained.encode_ordinary, special.encode,
                lambda text: special.encode(text, allowed_special="all"), special.encode_ordinary]
    for encode in encoders:
        for bad in (b"abc", bytearray(b"abc"), ["a", "b"], None):
            with pytest.raises(TypeError, match=f"encode\\(\\) takes a str, got {type(bad).__name__}"):
                encode(bad)


def test_a_lone_surrogate_is_refused_by_position(trained):
    """A str holding half of a UTF-16 pair is not Unicode text: it has no UTF-8 bytes, so encode
    refuses it with a one-line ValueError naming the position, not a bare UnicodeEncodeError."""
    special = BPETokenizer(list(trained.merges), special_tokens=["<|endoftext|>"])
    for encode in (trained.encode, trained.encode_ordinary, special.encode, special.encode_ordinary,
                   lambda text: special.encode(text, allowed_special="all")):
        for text, position in (("a\ud800b", 1), ("é\udfff", 1), ("\ud83d", 0)):
            with pytest.raises(ValueError, match=f"position {position} holds a lone surrogate"):
                encode(text)
    assert trained.decode(trained.encode("a\U0001F600b")) == "a\U0001F600b"       # a whole pair is fine


def test_allowed_special_must_be_a_mode_or_a_set(trained):
    tok = BPETokenizer(list(trained.merges), special_tokens=["<|endoftext|>"])
    with pytest.raises(ValueError, match="allowed_special .*got '<\\|endoftext\\|>'"):
        tok.encode("Exeunt.<|endoftext|>", allowed_special="<|endoftext|>")     # a set was meant: {"<|endoftext|>"}


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "not a minillm tokenizer file: its JSON is nested too deeply"),
    ('{"a": ' * 100_000 + "1" + "}" * 100_000, "not a minillm tokenizer file: its JSON is nested too deeply"),
    ('{"format": ' + "1" * 5000 + "}", "not a readable tokenizer file"),            # past Python's int-digit limit
])
def test_hostile_json_is_refused_with_the_path(tmp_path, text, message):
    path = tmp_path / "hostile.json"
    path.write_text(text)
    for load in (load_tokenizer, CharTokenizer.load, BPETokenizer.load):
        with pytest.raises(ValueError, match=message) as e:
            load(path)
        assert str(path) in str(e.value) and "\n" not in str(e.value)


# ------------------------------------------------------------------ hardening: long inputs

@pytest.fixture(scope="module")
def shakespeare_512(shakespeare):
    return BPETokenizer().train(shakespeare, 512)


def test_the_chunk_cap_leaves_tiny_shakespeare_unchanged(shakespeare, shakespeare_512):
    """The ids of the whole text are those minillm gave before chunks were capped (the digest
    was taken then): ordinary text never meets the cap."""
    ids = shakespeare_512.encode(shakespeare)
    assert len(ids) == 575_345
    assert hashlib.sha256(",".join(map(str, ids)).encode()).hexdigest() == \
        "0afdc72134acf13e7f8b093a9c4b64ff93e11b4559c11f5c8382200c2ce3de05"
    longest = max(len(c.encode("utf-8")) for c in regex.findall(GPT2_SPLIT_PATTERN, shakespeare))
    assert longest == 16 and longest <= minillm.tokenizer.MAX_CHUNK_BYTES


def test_a_long_word_is_merged_in_bounded_pieces(trained, monkeypatch):
    """No chunk longer than MAX_CHUNK_BYTES reaches the merge loop, whatever the input, so the
    work per byte is bounded (a timing-free check); and every long word still round-trips."""
    bound = minillm.tokenizer.MAX_CHUNK_BYTES
    tok = BPETokenizer(list(trained.merges))
    merged = []
    encode_chunk = tok._encode_chunk
    monkeypatch.setattr(tok, "_encode_chunk", lambda chunk: (merged.append(chunk), encode_chunk(chunk))[1])
    rng = random.Random(0)
    for word in ["".join(rng.choices(string.ascii_lowercase, k=1_000_000)), "a" * 1_000_000,
                 "日本語😀" * 30_000, " " + "é" * 99_999, "!" * (bound + 1)]:
        merged.clear()
        ids = tok.encode(word)
        assert tok.decode(ids) == word
        assert "".join(merged) == word and max(len(c.encode("utf-8")) for c in merged) <= bound
        assert ids == [i for piece in list(merged) for i in encode_chunk(piece)]   # the pieces, one after another
    assert len(merged) == 2                                                        # the last word: bound + 1 bytes


def test_the_chunk_cache_stays_bounded(trained, monkeypatch):
    monkeypatch.setattr(minillm.tokenizer, "_CACHE_SIZE", 100)
    tok = BPETokenizer(list(trained.merges))
    tok.encode("x" * 100_000)                                       # one long word: only its pieces are cached
    assert tok._cache and max(len(c.encode("utf-8")) for c in tok._cache) <= minillm.tokenizer.MAX_CHUNK_BYTES
    words = " ".join(f"w{i}" for i in range(1000))                   # 1000 distinct chunks
    assert tok.decode(tok.encode(words)) == words and 0 < len(tok._cache) <= 100


def test_exercise_checks_accept_solutions_and_reject_wrong_answers():
    assert_checks_work("02_tokenization", {
        0: "return ''.join(chars[i - 1] for i in ids)",                       # off by one
        1: "counts = {}\nfor pair in zip(ids, ids[1:] + ids[:1]):\n"          # wraps around the end
           "    counts[pair] = counts.get(pair, 0) + 1\nreturn counts",
        2: "out = list(ids)\nfor i in range(len(out) - 1):\n"                  # merges overlapping pairs twice
           "    if (ids[i], ids[i + 1]) == pair:\n        out[i] = new_id\n        out[i + 1] = None\n"
           "return [x for x in out if x is not None]",
        3: "words = [list(c.encode('utf-8')) for c in Counter(regex.findall(GPT2_SPLIT_PATTERN, text))]\n"
           "merges = []\nfor new_id in range(256, vocab_size):\n"                  # each distinct chunk counted once
           "    counts = Counter()\n    for ids in words:\n        counts.update(zip(ids, ids[1:]))\n"
           "    if not counts:\n        break\n"
           "    best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))\n"
           "    words = [merge_pair(ids, best, new_id) for ids in words]\n    merges.append(best)\nreturn merges",
    })
