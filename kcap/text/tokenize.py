"""Caption normalisation shared by the vocabulary, the metrics and the export."""

from __future__ import annotations

import re
import unicodedata

# Anything that is not a letter, a digit or white space is punctuation to us.
# Apostrophes are dropped rather than split on, so "dog's" becomes "dogs".
_APOSTROPHES = re.compile(r"['\u2019`]")
_NON_WORD = re.compile(r"[^\w\s]|_", re.UNICODE)
_SPACES = re.compile(r"\s+", re.UNICODE)


def normalize_caption(text: str) -> str:
    """Lower-cases `text`, strips punctuation and collapses white space.

    Example:

    >>> normalize_caption("A dog's  ball, (red)!")
    'a dogs ball red'
    """
    text = unicodedata.normalize("NFKC", text).lower()
    text = _APOSTROPHES.sub("", text)
    text = _NON_WORD.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


def tokenize(text: str) -> list[str]:
    """Splits a caption into normalised words.

    >>> tokenize("Two dogs play.")
    ['two', 'dogs', 'play']
    """
    normalized = normalize_caption(text)
    return normalized.split(" ") if normalized else []
