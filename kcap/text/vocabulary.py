"""The word vocabulary: built from training captions, stored as JSON."""

from __future__ import annotations

import collections
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from kcap.text.tokenize import tokenize
from kcap.utils.files import atomic_write_text

PAD, START, END, UNK = "<pad>", "<start>", "<end>", "<unk>"
SPECIAL_TOKENS = (PAD, START, END, UNK)
PAD_ID, START_ID, END_ID, UNK_ID = 0, 1, 2, 3

_FORMAT = "kcap.vocabulary"
_VERSION = 1


class Vocabulary:
    """Maps words to ids and back.

    Ids 0-3 are always `<pad>`, `<start>`, `<end>` and `<unk>`; words follow
    by decreasing frequency in the training captions (ties broken
    alphabetically, so the same captions always give the same ids).

    Example:

    >>> vocab = Vocabulary.build(["a red circle", "a blue square"], max_words=10)
    >>> vocab.decode(vocab.encode("a red square"))
    'a red square'
    """

    def __init__(self, words: Sequence[str], max_length: int):
        words = list(words)
        if tuple(words[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"A vocabulary must start with the special tokens {SPECIAL_TOKENS}; "
                f"got {words[:4]}."
            )
        if len(set(words)) != len(words):
            duplicates = [w for w, n in collections.Counter(words).items() if n > 1]
            raise ValueError(f"Vocabulary words must be unique; repeated: {duplicates[:5]}.")
        if max_length < 1:
            raise ValueError(f"max_length must be at least 1, got {max_length}.")
        self.words = words
        self.max_length = int(max_length)
        self._ids = {word: i for i, word in enumerate(words)}

    @classmethod
    def build(
        cls,
        captions: Iterable[str],
        max_words: int = 5000,
        max_length: int | None = None,
        min_count: int = 1,
    ) -> "Vocabulary":
        """Builds a vocabulary from (training) captions.

        Args:
            captions: raw caption strings; they are normalised here.
            max_words: keep the `max_words` most frequent words (special
                tokens not counted).
            max_length: cap on the number of words in a caption. Defaults to
                the longest training caption.
            min_count: leave out words seen fewer times (they become `<unk>`):
                on small data sets, words seen once or twice cannot be learnt.
        """
        counts: collections.Counter[str] = collections.Counter()
        longest = 0
        for caption in captions:
            words = tokenize(caption)
            counts.update(words)
            longest = max(longest, len(words))
        if not counts:
            raise ValueError("Cannot build a vocabulary from no words: the captions are empty.")
        for token in SPECIAL_TOKENS:
            counts.pop(token, None)
        ranked = sorted(
            ((w, n) for w, n in counts.items() if n >= min_count), key=lambda item: (-item[1], item[0])
        )
        words = list(SPECIAL_TOKENS) + [word for word, _ in ranked[:max_words]]
        length = longest if max_length is None else min(longest, max_length)
        return cls(words, max_length=max(1, length))

    def __len__(self) -> int:
        return len(self.words)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Vocabulary)
            and self.words == other.words
            and self.max_length == other.max_length
        )

    @property
    def sequence_length(self) -> int:
        """Length of an encoded caption: `<start>` + words + `<end>`."""
        return self.max_length + 2

    def word_id(self, word: str) -> int:
        return self._ids.get(word, UNK_ID)

    def encode(self, caption: str, pad: bool = False) -> np.ndarray:
        """Caption → int32 ids `<start> w1 ... wn <end>`, truncated to `max_length` words."""
        words = tokenize(caption)[: self.max_length]
        ids = [START_ID] + [self.word_id(w) for w in words] + [END_ID]
        if pad:
            ids += [PAD_ID] * (self.sequence_length - len(ids))
        return np.asarray(ids, dtype=np.int32)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → caption; stops at `<end>`, skips `<start>` and `<pad>`."""
        words = []
        for i in ids:
            i = int(i)
            if i == END_ID:
                break
            if i in (PAD_ID, START_ID):
                continue
            words.append(self.words[i] if 0 <= i < len(self.words) else UNK)
        return " ".join(words)

    def to_json(self) -> dict:
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "max_length": self.max_length,
            "words": self.words,
        }

    @classmethod
    def from_json(cls, data: dict, source: str = "vocabulary") -> "Vocabulary":
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            raise ValueError(f"{source}: not a kcap vocabulary (missing 'format': '{_FORMAT}').")
        expected = {"format", "version", "max_length", "words"}
        unknown = set(data) - expected
        missing = expected - set(data)
        if missing or unknown:
            raise ValueError(
                f"{source}: keys missing {sorted(missing)} / unknown {sorted(unknown)}."
            )
        if data["version"] != _VERSION:
            raise ValueError(f"{source}: unsupported vocabulary version {data['version']!r}.")
        if not isinstance(data["max_length"], int) or isinstance(data["max_length"], bool):
            raise ValueError(f"{source}: 'max_length' must be an integer.")
        words = data["words"]
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise ValueError(f"{source}: 'words' must be a list of strings.")
        try:
            return cls(words, max_length=data["max_length"])
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    def save(self, path: str | Path) -> None:
        """Writes the vocabulary as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_json(), ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Vocabulary":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"No vocabulary at {path}.") from None
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: not valid JSON ({error}).") from None
        return cls.from_json(data, source=str(path))
