"""Scoring a trained run on one of its splits."""

from __future__ import annotations

import collections
import os
import warnings
from collections.abc import Iterator
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING

from kcap.evaluation.metrics import (
    MeteorError,
    MeteorScorer,
    MeteorUnavailableWarning,
    caption_metrics,
    caption_shares,
)
from kcap.text.tokenize import normalize_caption
from kcap.utils.files import atomic_write_json

if TYPE_CHECKING:  # kcap.inference is a layer above; evaluation is handed what it loads
    from kcap.inference import TrainedRun


def blind_baseline(train_captions: list[str]) -> str:
    """The most frequent (normalised) training caption: what a model that ignores the image says."""
    counts = collections.Counter(normalize_caption(c) for c in train_captions)
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0][0]


def image_ids(paths: list[str]) -> list[str]:
    """COCO `image_id`s of image files: the file name without its extension, unless two share one.

    Flickr8k's `1000268201_693b08cb0e.jpg` becomes `"1000268201_693b08cb0e"`
    (a string, not COCO's integer ids; pycocoevalcap's scorers accept any
    hashable id). Where two files share a stem (`cats/000.jpg`, `dogs/000.jpg`),
    every id is the path below the files' common folder instead, without the
    extension where that is enough to tell them apart.

    >>> image_ids(["Images/1000268201_693b08cb0e.jpg", "shapes/00001.png"])
    ['1000268201_693b08cb0e', '00001']
    >>> image_ids(["images/cats/000.jpg", "images/dogs/000.jpg"])
    ['cats/000', 'dogs/000']
    """
    for candidate in _id_candidates(paths):
        if len(set(candidate)) == len(candidate):
            return candidate
    raise ValueError(f"Two of the images are one file: {sorted(paths)}.")


def _id_candidates(paths: list[str]) -> Iterator[list[str]]:
    yield [PurePath(p).stem for p in paths]
    absolute = [os.path.abspath(p) for p in paths]
    common = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
    relative = [PurePath(os.path.relpath(p, common)).as_posix() for p in absolute]
    yield [str(PurePosixPath(r).with_suffix("")) for r in relative]
    yield relative


def evaluate_run(
    trained: TrainedRun,
    split: str = "test",
    batch_size: int = 32,
    progress: bool = True,
    beam_size: int = 1,
    temperature: float | None = None,
    meteor: bool = True,
    images_dir: str | Path | None = None,
    tokenization: str = "auto",
    no_repeat_ngram: int = 0,
) -> dict:
    """Captions every image of `split` of a loaded run and scores them against all their references.

    `trained` is what `kcap.inference.load_run` returns: the run's model (the
    checkpoint it loaded), vocabulary and run directory.

    Writes `RUN/eval_<split>.json` and returns the same dict: `bleu1`..`bleu4`,
    `meteor`, `rouge_l`, `cider` (see `kcap.evaluation.metrics`; `meteor` is
    `None` with a `meteor_error` note where Java is missing), `tokenization`
    (`"ptb"`, the COCO caption evaluation's, or `"kcap"`), `num_images`,
    `distinct_captions`, `never_ended` and `repeated_trigram` (the shares of
    captions cut at the model's `max_length` and repeating a word trigram,
    see `caption_shares`), `captions`, and the same metrics for the
    image-blind baseline (the most frequent training caption, said for
    every image).

    `tokenization` is `"auto"` (the PTB tokenizer where Java runs, else
    kcap's `normalize_caption`), `"ptb"` or `"kcap"`; the model and the
    baseline are scored with the same one.

    Also writes `RUN/results_<split>.json`, the COCO caption results format
    `[{"image_id": ..., "caption": ...}]`, with `image_id` the image's id in
    its caption file where it has one (COCO's `id`, Karpathy's `cocoid`), else
    its file name stem, or its path where two stems clash (see `image_ids`).

    `beam_size`, `temperature` and `no_repeat_ngram` go to `model.generate` through
    `TrainedRun.caption_files`; the defaults are greedy decoding.

    `images_dir` is where the images are now when they moved since training
    (another machine, a copied run): each is read from the path it had below
    the run's images folder (`images_dir` in `splits.json`), below this one.

    Example:

    ```python
    report = evaluate_run(load_run("runs/shapes", "best"), "test", beam_size=1)
    print(report["bleu4"], report["cider"], report["baseline"]["cider"])
    ```
    """
    manifest = trained.run.load_splits()
    images = manifest["splits"].get(split) or []
    if not images:
        raise ValueError(f"The {split!r} split of {trained.run.path} has no images.")
    paths = [i["image"] for i in images]
    if images_dir is not None:
        if not os.path.isdir(images_dir):
            raise NotADirectoryError(f"{images_dir} is not a folder; --images takes the folder the run's images are in now.")
        paths = [os.path.join(images_dir, os.path.relpath(p, manifest["images_dir"])) for p in paths]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        where = (
            f"{images_dir} does not hold them below the paths they had below {manifest['images_dir']}"
            if images_dir is not None else
            f"{trained.run.splits} names each image by the path it had at training; put the images back "
            "there, or give the folder they are in now (kcap evaluate --images DIR)"
        )
        raise FileNotFoundError(
            f"{len(missing)} of the {len(paths)} images of the {split!r} split are missing, e.g. {missing[0]}. "
            f"{where}."
        )
    ids = [i["id"] for i in images] if all("id" in i for i in images) else image_ids(paths)
    results = trained.caption_files(
        paths, batch_size=batch_size, progress=progress, beam_size=beam_size, temperature=temperature,
        no_repeat_ngram=no_repeat_ngram,
    )
    references = [i["captions"] for i in images]
    hypotheses = [r["caption"] for r in results]
    baseline_caption = blind_baseline([c for i in manifest["splits"]["train"] for c in i["captions"]])

    # One METEOR Java process for the model and the baseline: starting it takes seconds.
    scorer, meteor_error = None, None
    if meteor:
        try:
            scorer = MeteorScorer()
        except MeteorError as error:
            meteor_error = str(error)
            warnings.warn(f"METEOR is not computed: {error}", MeteorUnavailableWarning, stacklevel=2)
    try:
        scores = caption_metrics(hypotheses, references, meteor=scorer or False, tokenization=tokenization)
        baseline = caption_metrics(
            [baseline_caption] * len(images), references, meteor=scorer or False, tokenization=scores["tokenization"]
        )
    finally:
        if scorer is not None:
            scorer.close()
    if meteor_error:
        scores["meteor_error"] = baseline["meteor_error"] = meteor_error

    report = {
        "split": split,
        "checkpoint": str(trained.model_file),
        "decoding": {"beam_size": beam_size, "temperature": temperature, "no_repeat_ngram": no_repeat_ngram},
        **scores,
        "num_images": len(images),
        "distinct_captions": len(set(hypotheses)),
        **caption_shares(hypotheses, trained.model.max_length),
        "baseline": {"caption": baseline_caption, **baseline},
        "captions": [
            {"image": r["image"], "caption": r["caption"], "references": refs}
            for r, refs in zip(results, references)
        ],
    }
    atomic_write_json(trained.run.results(split), [
        {"image_id": image_id, "caption": caption} for image_id, caption in zip(ids, hypotheses)
    ])
    atomic_write_json(trained.run.evaluation(split), report)
    return report

