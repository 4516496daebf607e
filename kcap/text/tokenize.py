"""Caption normalisation shared by the vocabulary, the metrics and the export."""

from __future__ import annotations

import re
import unicodedata

# Anything that is not a letter, a digit, a combining mark or white space is punctuation to us.
# Apostrophes are dropped rather than split on, so "dog's" becomes "dogs".
_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACES = re.compile(r"\s+", re.UNICODE)


def _space_unless_mark(match: re.Match) -> str:
    # Python's \w leaves out combining marks (Devanagari vowel signs, the dot of a lower-cased
    # "İ"), which belong to the word they sit in.
    char = match.group()
    return char if unicodedata.category(char).startswith("M") else " "


def normalize_caption(text: str) -> str:
    """Lower-cases `text`, strips punctuation and collapses white space.

    Example:

    >>> normalize_caption("A dog's  ball, (red)!")
    'a dogs ball red'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHES.sub("", text)
    text = _NON_WORD.sub(_space_unless_mark, text)
    return _SPACES.sub(" ", text).strip()


def tokenize(text: str) -> list[str]:
    """Splits a caption into normalised words.

    >>> tokenize("Two dogs play.")
    ['two', 'dogs', 'play']
    """
    normalized = normalize_caption(text)
    return normalized.split(" ") if normalized else []


# Scripts written without spaces between words: Han, Hiragana, Katakana, Thai, Lao, Khmer, Myanmar.
_UNSPACED_RUN = re.compile(
    "[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u0e00-\u0eff\u1780-\u17ff\u1000-\u109f]{4,}"
)


def is_unsegmented(text: str) -> bool:
    """Whether `text` has a run of a script written without spaces, which `tokenize` keeps as one word.

    >>> is_unsegmented("一只狗在草地上奔跑"), is_unsegmented("一只 狗 在 草地 上 奔跑"), is_unsegmented("a dog")
    (True, False, False)
    """
    return _UNSPACED_RUN.search(text) is not None
