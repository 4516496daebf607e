"""Caption metrics as the COCO caption evaluation computes them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr-D come from `pycocoevalcap` (the code
behind the COCO captioning leaderboard), so kcap's numbers can be set beside
published ones. `caption_metrics(..., tokenization=...)` chooses how
references and hypotheses are split into words before scoring:

* `"ptb"`: exactly as `pycocoevalcap.eval.COCOEvalCap.evaluate` does:
  Stanford's PTBTokenizer (Java, lower-cased, one call for the references
  and one for the hypotheses), then punctuation tokens dropped. It keeps
  clitics and hyphenated words as tokens: "a dog's t-shirt." becomes
  `a dog 's t-shirt`. The scores are then COCOEvalCap's to the last digit.
* `"kcap"`: `kcap.text.tokenize.normalize_caption`, the normalisation the
  vocabulary is built with: lower case, punctuation dropped, apostrophes
  removed without splitting, hyphens split ("a dog's t-shirt." becomes
  `a dogs t shirt`; Flickr8k's pre-tokenised "dog 's" becomes `dog s`).
  No Java, no subprocess.
* `"auto"`: `"ptb"` where a `java` executable is on the PATH, else `"kcap"`.
  `kcap evaluate` uses it, and records the tokenisation used as
  `"tokenization"` in `eval_<split>.json`.

The two agree on plain words; they differ on clitics and hyphens, and also
on `&`, `%`, `/`, `#`, `@`, parentheses and numbers such as `3.30` or
`1,000`. kcap's models write `normalize_caption` words ("t shirt"), so the
PTB references ("t-shirt", "dog 's") match them a little less often: on
Flickr8k the PTB scores are slightly lower (a beam-3 run's 125 test
captions: CIDEr-D 0.3049 against kcap's 0.3070, BLEU-4 0.1477 against
0.1480). Only the PTB figures compare with published ones.
`caption_metrics` defaults to `"kcap"`, which the per-epoch validation
captioning (`val_bleu4`, `val_cider`) keeps using: the PTB tokenizer costs
little (about 0.5 s per 1,000 images with 5 references each, two Java
starts), but it would change every run's validation history.

METEOR always needs Java (`meteor-1.5.jar`); where Java is missing or
fails, METEOR is `None` with a warning and a `"meteor_error"` note, and
the other metrics are still computed.

`caption_shares` measures two failures the n-gram scores hide: captions
that never end (decoding stopped them at `max_length` words, where `<end>`
is forced) and captions that repeat a word trigram ("a dog on a dog on a").

Details worth knowing:

* BLEU is pycocoevalcap's `Bleu(4)`: corpus-level, n-gram counts clipped by
  the most any one reference holds, the brevity penalty against the
  reference length closest to each hypothesis (ties go to the shorter), and
  a tiny smoothing (`(matches + 1e-15) / (guesses + 1e-9)`) so an order
  with no match gives a small positive BLEU rather than 0.
* CIDEr-D is pycocoevalcap's `Cider` scorer (it implements CIDEr-D:
  clipped n-gram counts and a Gaussian length penalty, sigma 6, scaled by
  10), with either tokenisation; the two CIDEr-D figures differ only by
  the words they are given. Its IDF is computed from the references of the
  evaluated images themselves, so a score depends on which images are
  scored together: a subset scores differently from the whole split, and a
  single image always scores 0 (every n-gram is in every "document").
* ROUGE-L is pycocoevalcap's `Rouge`: per image, the longest common
  subsequence's precision and recall are each the best over the references
  (not both from one reference), combined into an F-measure (beta 1.2),
  then averaged over images.
"""

from __future__ import annotations

import re
import shutil
import warnings
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from kcap import compat
from kcap.text.tokenize import normalize_caption
from kcap.text.vocabulary import END_ID

# Each score's key in the results, and its name in papers.
METRIC_LABELS = {
    "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
    "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr-D",
}


class MeteorUnavailableWarning(UserWarning):
    """METEOR could not be computed (no Java, or the METEOR jar failed)."""


class TokenizerUnavailableWarning(UserWarning):
    """The PTB tokenizer failed, so captions were scored with kcap's tokenisation."""


class MeteorError(RuntimeError):
    """The METEOR Java process is missing, failed or did not answer."""


class MeteorScorer:
    """One METEOR Java process (pycocoevalcap's `Meteor`), reused for several corpora.

    Starting the JVM and loading METEOR's paraphrase tables takes seconds;
    scoring a model and its baseline with one scorer pays that once.
    Raises `MeteorError` when Java is absent; `score` raises it when the
    process fails or gives no answer within `timeout` seconds.

    Example:

    ```python
    with MeteorScorer() as meteor:
        model = caption_metrics(hypotheses, references, meteor=meteor)
        blind = caption_metrics([baseline] * len(references), references, meteor=meteor)
    ```
    """

    def __init__(self, timeout: float = 600.0):
        if shutil.which("java") is None:
            raise MeteorError("METEOR needs Java, and no `java` executable is on the PATH.")
        self.timeout = float(timeout)
        try:
            self._meteor = Meteor()
        except OSError as error:
            raise MeteorError(f"Could not start METEOR's Java process: {error}.") from None

    def score(self, gts: dict, res: dict) -> float:
        """Corpus METEOR of `res` (id → [hypothesis]) against `gts` (id → references)."""
        try:
            return compat.meteor_score(self._meteor, gts, res, self.timeout)
        except compat.MeteorProcessError as error:
            raise MeteorError(str(error)) from None

    def close(self) -> None:
        """Stops the Java process."""
        compat.stop_meteor(self._meteor)

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


TOKENIZATIONS = ("auto", "ptb", "kcap")
# Where Java's PTBTokenizer ends a line besides "\n" (which pycocoevalcap turns into a space itself).
_LINE_BREAKS = re.compile("[\r\v\f\u2028\u2029]")


class TokenizerError(RuntimeError):
    """The PTB tokenizer is unavailable (no Java) or failed."""


def resolve_tokenization(tokenization: str) -> str:
    """`"ptb"` or `"kcap"`: `"auto"` becomes `"ptb"` where `java` is on the PATH.

    >>> resolve_tokenization("kcap")
    'kcap'
    """
    if tokenization not in TOKENIZATIONS:
        raise ValueError(f"tokenization must be one of {', '.join(TOKENIZATIONS)}, got {tokenization!r}.")
    if tokenization == "auto":
        return "ptb" if shutil.which("java") else "kcap"
    return tokenization


def ptb_tokenize(captions: dict) -> dict:
    """`{id: [caption, ...]}` tokenised as COCOEvalCap does: PTBTokenizer, punctuation dropped.

    One Java process for all the captions. Raises `TokenizerError` where
    Java is missing, the tokenizer cannot run (it writes its input file
    beside its jar, inside the pycocoevalcap package) or its output does
    not line up with the input.

    One departure from COCOEvalCap: line breaks other than `\\n` inside a
    caption (`\\r`, vertical tab, form feed, U+2028, U+2029) become spaces,
    as PTBTokenizer makes `\\n`. Java ends a line at each of them, so
    COCOEvalCap would pair every later caption with the wrong tokens.

    Example: `ptb_tokenize({0: ["A dog's ball."]})` gives `{0: ["a dog 's ball"]}`.
    """
    if shutil.which("java") is None:
        raise TokenizerError("The PTB tokenizer needs Java, and no `java` executable is on the PATH.")
    try:
        tokenized = PTBTokenizer().tokenize(
            {k: [{"caption": _LINE_BREAKS.sub(" ", c)} for c in v] for k, v in captions.items()}
        )
    except OSError as error:
        raise TokenizerError(f"pycocoevalcap's PTBTokenizer could not run: {error}.") from None
    # PTBTokenizer pairs output lines with captions by position and stops silently at the shorter.
    if [len(tokenized.get(k, ())) for k in captions] != [len(v) for v in captions.values()]:
        raise TokenizerError("pycocoevalcap's PTBTokenizer (Java) returned fewer lines than it was given.")
    return tokenized


def kcap_tokenize(captions: dict) -> dict:
    """`{id: [caption, ...]}` normalised with `normalize_caption`, as kcap's vocabulary is.

    >>> kcap_tokenize({0: ["A dog's t-shirt."]})
    {0: ['a dogs t shirt']}
    """
    return {k: [normalize_caption(c) for c in v] for k, v in captions.items()}


def _check(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> None:
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of captions, not one string.")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists.")
    if not hypotheses:
        raise ValueError("No captions to score.")
    for index, refs in enumerate(references):
        if isinstance(refs, str):
            raise TypeError(f"references[{index}] is one string; it must be a list of reference captions.")
        if not refs:
            raise ValueError(f"Image {index} has no reference captions.")
        for number, raw in enumerate(refs):
            if not normalize_caption(raw):
                raise ValueError(f"Reference {number} of image {index} is empty after normalisation: {raw!r}.")


def _prepare(hypotheses: Sequence[str], references: Sequence[Sequence[str]], tokenization: str) -> tuple[dict, dict]:
    """Tokenised captions in pycocoevalcap's layout: `{index: [caption, ...]}`.

    An empty hypothesis (the model said `<end>` first) is a valid, zero-scoring caption.
    """
    _check(hypotheses, references)
    gts = {index: list(refs) for index, refs in enumerate(references)}
    res = {index: [hypothesis] for index, hypothesis in enumerate(hypotheses)}
    if tokenization == "ptb":
        # Two calls, references first, as COCOEvalCap.evaluate makes them.
        return ptb_tokenize(gts), ptb_tokenize(res)
    return kcap_tokenize(gts), kcap_tokenize(res)


def _bleu(gts: dict, res: dict) -> dict[str, float]:
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}


def caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor: bool | MeteorScorer = True,
    tokenization: str = "kcap",
) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of captions, as pycocoevalcap computes them.

    Args:
        hypotheses: one generated caption per image.
        references: the reference captions of each image.
        meteor: `True` starts a METEOR Java process for this call, a
            `MeteorScorer` is reused, `False` skips METEOR (its value is `None`).
        tokenization: `"ptb"` tokenises as the COCO caption evaluation does
            (Java), `"kcap"` with `normalize_caption`, `"auto"` is `"ptb"`
            where Java is on the PATH (see the module docstring). Where
            `"auto"` finds Java but the PTB tokenizer fails, it falls back to
            `"kcap"` with a `TokenizerUnavailableWarning` and a
            `tokenization_error` note; `"ptb"` raises `TokenizerError` instead.

    Returns a dict with `bleu1`..`bleu4`, `meteor`, `rouge_l` and `cider`
    (floats; `meteor` is `None` when skipped or unavailable, and then
    `meteor_error` says why), and `tokenization`, the one used (`"ptb"`
    or `"kcap"`).

    Example:

    >>> scores = caption_metrics(["a red circle"], [["a red circle", "a circle"]], meteor=False)
    >>> round(scores["bleu3"], 6), round(scores["rouge_l"], 6), scores["meteor"], scores["tokenization"]
    (1.0, 1.0, None, 'kcap')
    """
    used = resolve_tokenization(tokenization)
    tokenization_error = None
    try:
        gts, res = _prepare(hypotheses, references, used)
    except TokenizerError as error:
        if tokenization == "ptb":
            raise
        warnings.warn(f"Scoring with kcap's tokenisation: {error}", TokenizerUnavailableWarning, stacklevel=2)
        used, tokenization_error = "kcap", str(error)
        gts, res = _prepare(hypotheses, references, used)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = _bleu(gts, res)
    scores["meteor"] = None
    scores["rouge_l"] = float(rouge)
    scores["cider"] = float(cider)
    scores["tokenization"] = used
    if tokenization_error:
        scores["tokenization_error"] = tokenization_error
    if meteor is False or meteor is None:
        return scores
    try:
        if isinstance(meteor, MeteorScorer):
            scores["meteor"] = meteor.score(gts, res)
        else:
            with MeteorScorer() as scorer:
                scores["meteor"] = scorer.score(gts, res)
    except MeteorError as error:
        message = f"METEOR is not computed: {error}"
        warnings.warn(message, MeteorUnavailableWarning, stacklevel=2)
        scores["meteor_error"] = str(error)
    return scores


def _words(caption: str | Sequence[int]) -> list:
    """A caption's words: a string split on spaces, or token ids up to the first `<end>`."""
    if isinstance(caption, str):
        return caption.split()
    words = []
    for token in caption:
        if int(token) == END_ID:
            break
        words.append(int(token))
    return words


def repeats_trigram(words: Sequence) -> bool:
    """Whether a word trigram occurs twice in `words` (the two may overlap).

    >>> repeats_trigram("a dog on a dog on a".split()), repeats_trigram("a dog and a dog".split())
    (True, False)
    """
    trigrams = list(zip(words, words[1:], words[2:]))
    return len(set(trigrams)) < len(trigrams)


def caption_shares(captions: Sequence[str | Sequence[int]], max_length: int) -> dict[str, float]:
    """The shares of captions that never end and that repeat a word trigram.

    A caption never ends when decoding stopped it at `max_length` words: the
    samplers then force `<end>` (see `kcap.model.samplers.base`), so the
    model did not choose it. Each caption is a string of words (as
    `Vocabulary.decode` writes them; a word never holds a space) or a row of
    token ids as the samplers return them.

    Returns `{"never_ended": share, "repeated_trigram": share}` (0 to 1).

    >>> caption_shares(["a dog runs", "a dog on a dog on a"], max_length=7)
    {'never_ended': 0.5, 'repeated_trigram': 0.5}
    """
    if not captions:
        raise ValueError("No captions to count.")
    words = [_words(c) for c in captions]
    return {
        "never_ended": sum(len(w) >= max_length for w in words) / len(words),
        "repeated_trigram": sum(repeats_trigram(w) for w in words) / len(words),
    }
