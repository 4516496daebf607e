"""Property tests (hypothesis) for caption text, the vocabulary and the caption-file readers (issue #8).

Any Unicode text normalises, encodes and decodes without error; special tokens never come out of
caption text; decode(encode(x)) gives back the normalised caption; captions with commas, quotes
and newlines survive a CSV round trip; and whatever bytes a caption file holds, reading it either
works or raises a `CaptionFileError` naming the file, never anything else.
"""

import csv
import io
import json
import os
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from kcap.data.caption_files import CaptionFileError, read_captions
from kcap.text.tokenize import normalize_caption, tokenize
from kcap.text.vocabulary import END_ID, PAD_ID, SPECIAL_TOKENS, START_ID, UNK_ID, Vocabulary

# KCAP_HYPOTHESIS_EXAMPLES=5000 for a deeper search than the suite's quick one.
SETTINGS = settings(
    max_examples=int(os.environ.get("KCAP_HYPOTHESIS_EXAMPLES", "200")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

# Text as captions come: any Unicode, plus the characters that break naive parsers.
awkward = st.sampled_from([",", '"', "'", "\n", "\r\n", "\r", "\t", "<start>", "<pad>", "<end>", "<unk>",
                           "#0", "\u2028", "\x0c", "\u00a0", "\ufeff", "İ", "ß", "ﬁ", "e\u0301", "\x00"])
caption_text = st.lists(st.one_of(st.text(), awkward), max_size=8).map("".join)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("properties")
    (root / "Images").mkdir()
    return root


# --- normalisation and tokens ---------------------------------------------------------------------


@SETTINGS
@given(caption_text)
@example("A <start> dog <pad> and <END>, <unk>!")
def test_normalisation_is_total_idempotent_and_leaves_no_specials(text):
    normalized = normalize_caption(text)
    assert normalize_caption(normalized) == normalized
    assert normalized == normalized.strip() and "  " not in normalized
    assert not set(normalized) & set("<>,.!?\"'#\t\n\r")
    words = tokenize(text)
    assert words == (normalized.split(" ") if normalized else [])
    assert all(words) and not set(words) & set(SPECIAL_TOKENS)


@SETTINGS
@given(caption_text, st.lists(caption_text, max_size=5))
@example("<start> <pad> <end> <unk>", ["start pad end unk"])
def test_caption_text_never_becomes_a_special_id(text, training):
    assume(any(tokenize(c) for c in training))
    vocab = Vocabulary.build(training, max_words=50)
    ids = vocab.encode(text, pad=True).tolist()
    words = tokenize(text)[: vocab.max_length]
    # <start> first, <end> right after the words, <pad> after that, and nowhere else.
    assert ids[0] == START_ID and ids[len(words) + 1] == END_ID
    assert ids[len(words) + 2:] == [PAD_ID] * (vocab.sequence_length - len(words) - 2)
    body = ids[1: len(words) + 1]
    assert not {PAD_ID, START_ID, END_ID} & set(body) and all(0 <= i < len(vocab) for i in body)
    # Unknown words are <unk>; decoding gives each known word back.
    assert vocab.decode(ids) == " ".join(w if w in vocab.words else "<unk>" for w in words)
    assert body.count(UNK_ID) == sum(w not in vocab.words for w in words)


@SETTINGS
@given(caption_text)
@example("The <start> of a dog's ball, \"red\"!")
def test_decode_of_encode_is_the_normalised_caption(text):
    assume(tokenize(text))
    vocab = Vocabulary.build([text], max_words=1000)
    assert vocab.decode(vocab.encode(text)) == normalize_caption(text)
    assert vocab.decode(vocab.encode(text, pad=True)) == normalize_caption(text)


@SETTINGS
@given(st.lists(caption_text, min_size=1, max_size=6))
def test_vocabulary_json_round_trips_any_words(folder, captions):
    assume(any(tokenize(c) for c in captions))
    vocab = Vocabulary.build(captions)
    vocab.save(folder / "vocab.json")
    assert Vocabulary.load(folder / "vocab.json") == vocab
    assert Vocabulary.from_json(json.loads(json.dumps(vocab.to_json()))) == vocab


# --- caption files ----------------------------------------------------------------------------------

# Image names a caption file may hold: anything but path separators and NUL (they never name a
# file inside the images folder), commas and quotes included.
image_name = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\\\x00\n\r"), min_size=1, max_size=12
).filter(lambda n: n.strip() not in ("", ".", ".."))


@SETTINGS
@given(st.lists(st.tuples(image_name, caption_text), min_size=1, max_size=8))
@example([("a,b.jpg", 'A "dog", a\nnewline'), ("c.jpg", "two\r\nlines, \"quoted\"")])
def test_csv_round_trips_captions_with_commas_quotes_and_newlines(folder, rows):
    # A caption needs a word: empty or punctuation-only ones are refused (tested elsewhere).
    rows = [(name, caption) for name, caption in rows if tokenize(caption) and "\x00" not in caption]
    assume(rows)
    path = folder / "captions.csv"
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(["image", "caption"])
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    dataset = read_captions(path, format="csv")
    expected: dict[str, list[str]] = {}
    for name, caption in rows:
        expected.setdefault(name.strip(), []).append(caption.strip())
    assert {image.name: image.captions for image in dataset} == expected
    assert all(image.path.parent == folder / "Images" for image in dataset)
    # The collecting reader reads the same file the same way and finds no error in it.
    problems = []
    assert [i.captions for i in read_captions(path, format="csv", errors=problems)] == [i.captions for i in dataset]
    assert all(p.severity == "warning" for p in problems)


@SETTINGS
@given(st.lists(st.tuples(st.text(string.ascii_letters + string.digits + "._-", min_size=1, max_size=10),
                          caption_text), min_size=1, max_size=8))
def test_token_file_round_trips_captions(folder, rows):
    rows = [(n, " ".join(c.split())) for n, c in rows if n.strip(".") and tokenize(c)]
    assume(rows)
    path = folder / "Flickr8k.token.txt"
    lines, expected, numbers = [], {}, {}
    for name, caption in rows:
        number = numbers[name] = numbers.get(name, -1) + 1
        lines.append(f"{name}#{number}\t{caption}")
        expected.setdefault(name, []).append(caption)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    try:
        dataset = read_captions(path, format="flickr8k")
    finally:
        path.unlink()
    assert {image.name: image.captions for image in dataset} == expected


def _read_all_ways(path: Path, format: str):
    """Reads in the strict and the collecting mode; only `CaptionFileError` may come out."""
    for errors in (None, []):
        try:
            read_captions(path, format=format, errors=errors)
        except CaptionFileError as error:
            assert str(path) in str(error)
        if errors:
            assert all(p.file.startswith(str(path.parent)) and p.reason for p in errors)


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from(["csv", "flickr8k", "auto"]))
@example(b"image,caption\na.jpg,\"unclosed\n", "csv")
@example(b"image,caption\na.jpg,caf\xe9\n\x00,\x00\n", "csv")
@example(b"a.jpg#0\tA dog\n\xff\xfe#1\tx\n", "flickr8k")
def test_any_bytes_in_a_text_caption_file_read_or_fail_with_a_caption_file_error(folder, data, format):
    path = folder / "captions.txt"
    path.write_bytes(data)
    try:
        _read_all_ways(path, format)
    finally:
        path.unlink()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(
        ["images", "annotations", "id", "image_id", "file_name", "caption", "filename", "filepath", "split",
         "sentences", "raw", "x"]), children, max_size=5),
    max_leaves=20,
)


@SETTINGS
@given(json_values, st.sampled_from(["coco", "karpathy", "auto"]))
@example({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"image_id": 1, "caption": 5}]}, "coco")
@example({"images": [{"filename": "a.jpg", "split": "train", "sentences": [{"raw": ""}]}]}, "karpathy")
def test_any_json_caption_file_reads_or_fails_with_a_caption_file_error(folder, value, format):
    path = folder / "captions.json"
    path.write_text(json.dumps(value))
    try:
        _read_all_ways(path, format)
    finally:
        path.unlink()
