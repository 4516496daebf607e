"""Caption metrics as the COCO caption evaluation computes them.

BLEU-1..4, METEOR, ROUGE-L and CIDEr-D come from `pycocoevalcap` (the code
behind the COCO captioning leaderboard), so kcap's numbers can be set beside
published ones. What kcap does differently is the tokenisation:

* `pycocoevalcap.eval.COCOEvalCap` runs Stanford's PTBTokenizer (Java) and
  then drops punctuation tokens. It keeps clitics as tokens of their own:
  "a dog's ball." becomes `a dog 's ball`.
* kcap tokenises references and hypotheses with
  `kcap.text.tokenize.normalize_caption`, the normalisation its vocabulary is
  built with: lower case, punctuation dropped, apostrophes removed without
  splitting ("a dog's ball." becomes `a dogs ball`). Hypotheses and
  references then live in the same word space as the model's output, and
  BLEU, ROUGE-L and CIDEr-D need no Java.

The two give the same tokens for plain words; they differ on clitics and
hyphens, and also on `&`, `%`, `/`, `#`, `@`, parentheses and numbers such
as `3.30` or `1,000` (kcap drops the symbols and splits `3.30` into `3 30`;
the PTB tokenizer keeps some symbols as tokens and `3.30` whole). Where
they differ the scores differ slightly, so compare kcap's figures with
published ones with that in mind. METEOR always needs Java
(`meteor-1.5.jar`); where Java is missing or fails, METEOR is `None` with
a warning and a `"meteor_error"` note, and the other metrics are still computed.

Details worth knowing:

* BLEU is pycocoevalcap's `Bleu(4)`: corpus-level, n-gram counts clipped by
  the most any one reference holds, the brevity penalty against the
  reference length closest to each hypothesis (ties go to the shorter), and
  a tiny smoothing (`(matches + 1e-15) / (guesses + 1e-9)`) so an order
  with no match gives a small positive BLEU rather than 0.
* CIDEr-D is pycocoevalcap's `Cider` scorer (it implements CIDEr-D:
  clipped n-gram counts and a Gaussian length penalty, sigma 6, scaled by
  10). Its IDF is computed from the references of the evaluated images
  themselves, so a score depends on which images are scored together: a
  subset scores differently from the whole split, and a single image
  always scores 0 (every n-gram is in every "document").
* ROUGE-L is pycocoevalcap's `Rouge`: per image, the longest common
  subsequence's precision and recall are each the best over the references
  (not both from one reference), combined into an F-measure (beta 1.2),
  then averaged over images.
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Sequence

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from kcap import compat
from kcap.text.tokenize import normalize_caption

# Each score's key in the results, and its name in papers.
METRIC_LABELS = {
    "bleu1": "BLEU-1", "bleu2": "BLEU-2", "bleu3": "BLEU-3", "bleu4": "BLEU-4",
    "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr-D",
}


class MeteorUnavailableWarning(UserWarning):
    """METEOR could not be computed (no Java, or the METEOR jar failed)."""


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


def _prepare(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> tuple[dict, dict]:
    """Normalised captions in pycocoevalcap's layout: `{index: [caption, ...]}`."""
    if isinstance(hypotheses, str):
        raise TypeError("hypotheses must be a list of captions, not one string.")
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists.")
    if not hypotheses:
        raise ValueError("No captions to score.")
    gts, res = {}, {}
    for index, (hypothesis, refs) in enumerate(zip(hypotheses, references)):
        if isinstance(refs, str):
            raise TypeError(f"references[{index}] is one string; it must be a list of reference captions.")
        normalized = [normalize_caption(r) for r in refs]
        if not normalized:
            raise ValueError(f"Image {index} has no reference captions.")
        for number, (raw, text) in enumerate(zip(refs, normalized)):
            if not text:
                raise ValueError(f"Reference {number} of image {index} is empty after normalisation: {raw!r}.")
        gts[index] = normalized
        # An empty hypothesis (the model said <end> first) is a valid, zero-scoring caption.
        res[index] = [normalize_caption(hypothesis)]
    return gts, res


def _bleu(gts: dict, res: dict) -> dict[str, float]:
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}


def caption_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    meteor: bool | MeteorScorer = True,
) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L and CIDEr-D of captions, as pycocoevalcap computes them.

    Args:
        hypotheses: one generated caption per image.
        references: the reference captions of each image.
        meteor: `True` starts a METEOR Java process for this call, a
            `MeteorScorer` is reused, `False` skips METEOR (its value is `None`).

    Returns a dict with `bleu1`..`bleu4`, `meteor`, `rouge_l` and `cider`
    (floats; `meteor` is `None` when skipped or unavailable, and then
    `meteor_error` says why). Captions are normalised with
    `normalize_caption` (see the module docstring for how that differs
    from the PTBTokenizer).

    Example:

    >>> scores = caption_metrics(["a red circle"], [["a red circle", "a circle"]], meteor=False)
    >>> round(scores["bleu3"], 6), round(scores["rouge_l"], 6), scores["meteor"]
    (1.0, 1.0, None)
    """
    gts, res = _prepare(hypotheses, references)
    rouge, _ = Rouge().compute_score(gts, res)
    cider, _ = Cider().compute_score(gts, res)
    scores = _bleu(gts, res)
    scores["meteor"] = None
    scores["rouge_l"] = float(rouge)
    scores["cider"] = float(cider)
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
