"""Caption text: normalisation, tokenisation and the vocabulary."""

from kcap.text.tokenize import normalize_caption, tokenize
from kcap.text.vocabulary import Vocabulary

__all__ = ["Vocabulary", "normalize_caption", "tokenize"]
