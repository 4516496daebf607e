import json

import pytest

from kcap.text import Vocabulary, normalize_caption, tokenize
from kcap.text.vocabulary import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID

CAPTIONS = ["A dog runs.", "A black dog, running!", "Two dogs play in the snow", "a dog"]


def test_normalisation_lowercases_and_strips_punctuation():
    assert normalize_caption("A Dog's BALL, (red)!  ") == "a dogs ball red"
    assert tokenize("  ") == []


def test_words_with_combining_marks_stay_whole():
    # Devanagari vowel signs and viramas are combining marks, not punctuation: "कुत्ता" (dog)
    # is one word. "İ" lower-cases to "i" plus a combining dot, which must not split "istanbul".
    assert tokenize("एक कुत्ता घास में दौड़ता है।") == ["एक", "कुत्ता", "घास", "में", "दौड़ता", "है"]
    assert tokenize("İstanbul'da bir köpek") == ["i\u0307stanbulda", "bir", "köpek"]
    assert tokenize("e\u0301te\u0301, naïve") == ["été", "naïve"]


def test_build_orders_by_frequency_and_reserves_special_ids():
    vocab = Vocabulary.build(CAPTIONS)
    assert vocab.words[:4] == list(SPECIAL_TOKENS)
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)
    assert vocab.words[4:6] == ["a", "dog"]  # the two most frequent words
    assert vocab.max_length == 6  # "two dogs play in the snow"


def test_top_k_and_unknown_words():
    vocab = Vocabulary.build(CAPTIONS, max_words=2)
    assert len(vocab) == 6
    ids = vocab.encode("a cat")
    assert list(ids) == [START_ID, vocab.word_id("a"), UNK_ID, END_ID]
    assert vocab.decode(ids) == "a <unk>"


def test_rare_words_can_be_left_out():
    vocab = Vocabulary.build(CAPTIONS, min_count=2)
    assert vocab.words[4:] == ["a", "dog"]


def test_encode_pads_and_truncates_to_max_length():
    vocab = Vocabulary.build(CAPTIONS, max_length=3)
    ids = vocab.encode("two dogs play in the snow", pad=True)
    assert len(ids) == vocab.sequence_length == 5
    assert vocab.decode(ids) == "two dogs play"
    short = vocab.encode("a dog", pad=True)
    assert list(short[-1:]) == [PAD_ID]


def test_json_round_trip(tmp_path):
    vocab = Vocabulary.build(CAPTIONS, max_words=5, max_length=4)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    loaded = Vocabulary.load(path)
    assert loaded == vocab
    assert loaded.decode(loaded.encode("a black dog")) == "a black dog"
    assert json.loads(path.read_text())["format"] == "kcap.vocabulary"


def test_invalid_json_names_the_problem(tmp_path):
    path = tmp_path / "vocab.json"
    data = Vocabulary.build(CAPTIONS).to_json()
    data["extra"] = 1
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="extra"):
        Vocabulary.load(path)
    data.pop("extra")
    data["words"] = ["a", "b"]
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary.load(path)
