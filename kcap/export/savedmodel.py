"""SavedModel export: a trained run becomes one self-contained serving artifact.

Everything from encoded image bytes to caption strings runs inside the
graph: decoding and resizing (`kcap.data.images.decode_image`, the very
function `kcap caption` uses), preprocessing, backbone, encoder, the decoding
loop and the id → word lookup. Serving needs TensorFlow only: no kcap, no
Keras custom objects, no vocabulary file read at request time.

Signatures of the exported SavedModel:

- `serving_default`: `image_bytes` (`tf.string`, `[None]`, JPEG/PNG/GIF/BMP
  bytes) → `caption` (`tf.string`, `[None]`), `score` (`float32`, `[None]`,
  the caption's summed log-probability, `<end>` included).
- `serving_images`: `images` (`float32`, `[None, H, W, 3]`, RGB in [0, 255] at
  the model's image size) → the same outputs.
- `decode_image`: one image's bytes (`tf.string`, `[]`) → `pixels` (`uint8`,
  `[H, W, 3]`), the pixels `serving_default` and `kcap caption` caption; an
  image TensorFlow cannot decode fails this call alone (`kcap serve` decodes
  each request on its own, then captions many as one batch).
- `caption_details`: `images` as `serving_images` → its `caption` and `score`,
  the search's other finished captions (`candidates`, `candidate_scores`, best
  first) and the caption's `attention` over the feature map's locations
  (`[None, max_length + 1, h * w]`, a row per word, then `<end>`'s).

`kcap.export.signatures` names them and describes their inputs and outputs.

Assets (under `assets/`): `vocab.json` and `config.json` of the run,
`kcap_version.txt` and `export.json` (how the export was made).
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from pathlib import Path

import keras
import tensorflow as tf

import kcap
from kcap import compat
from kcap.data.images import decode_image
from kcap.export.signatures import CAPTION_DETAILS, DECODE_IMAGE, SERVING_DEFAULT, SERVING_IMAGES, SIGNATURES
from kcap.model.samplers import Sampler, get_sampler, sampler_for
from kcap.text.vocabulary import END_ID, PAD_ID, START_ID
from kcap.training.run_dir import CHECKPOINTS
from kcap.utils.files import atomic_directory

EXPORT_FORMAT = "kcap.export"
EXPORT_VERSION = 1


def captions_from_ids(ids: tf.Tensor, words: tf.Tensor) -> tf.Tensor:
    """Token ids → caption strings, in the graph; the same text as `Vocabulary.decode`.

    Stops at the first `<end>`, skips `<pad>` and `<start>`, joins with spaces.

    Args:
        ids: int32 (batch, time).
        words: tf.string (vocabulary_size,), the words by id.

    Returns tf.string (batch,).

    Example:

    >>> words = tf.constant(["<pad>", "<start>", "<end>", "<unk>", "a", "dog"])
    >>> captions_from_ids(tf.constant([[4, 5, 2, 4], [2, 0, 0, 0]]), words).numpy().tolist()
    [b'a dog', b'']
    """
    ids = tf.convert_to_tensor(ids, tf.int32)
    # Inclusive count of <end> so far: 0 strictly before the first <end>.
    before_end = tf.equal(tf.cumsum(tf.cast(tf.equal(ids, END_ID), tf.int32), axis=1), 0)
    keep = before_end & tf.not_equal(ids, PAD_ID) & tf.not_equal(ids, START_ID)
    tokens = tf.ragged.boolean_mask(tf.gather(words, ids), keep)
    return tf.strings.reduce_join(tokens, axis=1, separator=" ")


def build_export_archive(
    model: keras.Model, words: list[str], sampler: str | Sampler = "greedy"
) -> keras.export.ExportArchive:
    """An `ExportArchive` with the endpoints of the module docstring.

    Args:
        model: a `kcap.model.captioner.Captioner`.
        words: the vocabulary's words, by id.
        sampler: how the endpoints caption, through `Captioner.decode`: a
            `kcap.model.samplers` sampler or its name.

    Example:

    ```python
    trained = kcap.inference.load_run("runs/shapes")
    archive = build_export_archive(trained.model, trained.vocabulary.words)
    archive.write_out("exported/shapes")
    ```
    """
    if len(words) != model.vocabulary_size:
        raise ValueError(f"The model has {model.vocabulary_size} words but {len(words)} were given.")
    sampler = get_sampler(sampler)
    height, width = model.image_size
    max_length = model.max_length

    archive = keras.export.ExportArchive()
    # No `archive.track(model)`: the endpoints capture every variable they use, and
    # ExportArchive saves those; tracking the model as well stores each weight twice
    # (keras-team/keras#23553: a 2x artifact, 2x variable memory when served).
    # Words live in the SavedModel itself (a string variable captured by the
    # graph), so serving reads no file; the collection makes them visible as
    # `loaded.vocabulary_words[0]` after `tf.saved_model.load`.
    vocabulary_words = tf.Variable(words, dtype=tf.string, trainable=False, name="vocabulary_words")
    archive.add_variable_collection("vocabulary_words", [vocabulary_words])

    def caption_batch(images):
        encoded = model.encode({"images": images}, training=False)
        ids, _, scores = model.decode(encoded, sampler, tf.constant(max_length, tf.int32))
        return captions_from_ids(ids, vocabulary_words), tf.cast(scores, tf.float32)

    def no_captions():
        return tf.zeros([0], tf.string), tf.zeros([0], tf.float32)

    def caption_images(images):
        # An empty request gets empty answers; the backbone itself fails on a batch of 0.
        captions, scores = tf.cond(tf.shape(images)[0] > 0, lambda: caption_batch(images), no_captions)
        return {"caption": captions, "score": scores}

    def decode_one(image_bytes):
        # The exact decode + resize of `kcap caption`; uint8 after resizing, as there,
        # so both paths feed the model the same pixels.
        return decode_image(image_bytes, (height, width))

    def caption_bytes(image_bytes):
        images = tf.map_fn(
            decode_one, image_bytes, fn_output_signature=tf.TensorSpec((height, width, 3), tf.uint8)
        )
        return caption_images(tf.cast(images, tf.float32))

    def caption_details(images):
        # The backbone fails on a batch of 0: one blank image is captioned instead, and none returned.
        count = tf.shape(images)[0]
        images = tf.cond(count > 0, lambda: images, lambda: tf.zeros([1, height, width, 3]))
        encoded = model.encode({"images": images}, training=False)
        ids, attention, scores = sampler.candidates(model.decoder, encoded, tf.constant(max_length, tf.int32))
        shape = tf.shape(ids)
        captions = tf.reshape(captions_from_ids(tf.reshape(ids, [-1, shape[2]]), vocabulary_words), shape[:2])
        scores = tf.cast(scores, tf.float32)
        return {"caption": captions[:count, 0], "score": scores[:count, 0], "candidates": captions[:count],
                "candidate_scores": scores[:count], "attention": tf.cast(attention[:count, 0], tf.float32)}

    # Named `serving_default` ourselves, so TF Serving and `saved_model_cli`
    # list it under that key (ExportArchive would otherwise alias the first endpoint).
    archive.add_endpoint(
        SERVING_DEFAULT, caption_bytes,
        input_signature=[tf.TensorSpec((None,), tf.string, name="image_bytes")],
    )
    archive.add_endpoint(
        SERVING_IMAGES, caption_images,
        input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32, name="images")],
    )
    archive.add_endpoint(
        DECODE_IMAGE, lambda image_bytes: {"pixels": decode_one(image_bytes)},
        input_signature=[tf.TensorSpec((), tf.string, name="image_bytes")],
    )
    archive.add_endpoint(
        CAPTION_DETAILS, caption_details,
        input_signature=[tf.TensorSpec((None, height, width, 3), tf.float32, name="images")],
    )
    return archive


def export_run(
    run_dir: str | Path,
    output: str | Path,
    beam_size: int = 1,
    force: bool = False,
    checkpoint: str = "best",
    no_repeat_ngram: int = 0,
) -> Path:
    """Writes a trained run as a SavedModel that captions JPEG/PNG bytes.

    Args:
        run_dir: a kcap run directory.
        output: the SavedModel directory to write.
        beam_size: 1 for greedy decoding (as `kcap caption`), more for beam search.
        force: replace an existing export at `output`.
        checkpoint: `"best"` (the best epoch by the run's `--monitor`) or `"last"`.
        no_repeat_ngram: n > 0: the captions never repeat an n-gram (as `kcap caption --no-repeat-ngram`).

    The export is written into a temporary directory beside `output` and
    renamed onto it at the end, so a failed export leaves an earlier one intact.

    Example:

    ```python
    export_run("runs/shapes", "exported/shapes")
    serving = tf.saved_model.load("exported/shapes")
    out = serving.signatures["serving_default"](image_bytes=tf.constant([open("a.jpg", "rb").read()]))
    print(out["caption"].numpy()[0].decode(), float(out["score"][0]))
    ```
    """
    from kcap.inference import load_run

    output = Path(output)
    if checkpoint not in CHECKPOINTS:
        raise ValueError(f"checkpoint must be one of {CHECKPOINTS}, got {checkpoint!r}.")
    sampler = sampler_for(beam_size, no_repeat_ngram=no_repeat_ngram)  # fails on an unsupported beam size before anything is loaded
    _check_output(output, Path(run_dir), force)

    trained = load_run(run_dir, checkpoint)
    archive = build_export_archive(trained.model, trained.vocabulary.words, sampler)
    info = {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "kcap_version": kcap.__version__,
        "run_dir": str(Path(run_dir).resolve()),
        "checkpoint": checkpoint,
        "model_file": str(trained.model_file.resolve()),
        "beam_size": beam_size,
        "no_repeat_ngram": no_repeat_ngram,
        "image_size": list(trained.model.image_size),
        "max_length": trained.model.max_length,
        "vocabulary_size": len(trained.vocabulary),
        # The feature map's (height, width): `caption_details`' attention rows are these grids, flattened.
        "attention_grid": list(trained.model.feature_shape[:2]),
        "decoder": trained.model.decoder_name,
        "signatures": SIGNATURES,
    }
    with tempfile.TemporaryDirectory(prefix="kcap-export-") as staging:
        staging = Path(staging)
        (staging / "kcap_version.txt").write_text(kcap.__version__ + "\n", encoding="utf-8")
        (staging / "export.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        # tf.saved_model.save copies every tracked Asset into assets/ under its own file name.
        assets = {
            "vocab": tf.saved_model.Asset(str(trained.run.vocabulary)),
            "config": tf.saved_model.Asset(str(trained.run.config)),
            "kcap_version": tf.saved_model.Asset(str(staging / "kcap_version.txt")),
            "export": tf.saved_model.Asset(str(staging / "export.json")),
        }
        compat.attach_assets(archive, "kcap_assets", assets)
        with atomic_directory(output, replace=force) as tmp, _quiet_tensorflow_logger():
            archive.write_out(str(tmp), verbose=False)
    return output


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    """Hides the saver's INFO/WARNING chatter (temporary paths, renamed loop inputs)."""
    # TensorFlow's own logger, and absl's, which the signature code logs through.
    loggers = [tf.get_logger(), logging.getLogger("absl")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _check_output(output: Path, run_dir: Path, force: bool) -> None:
    """Refuses to replace anything but an earlier SavedModel, and that only with `force`."""
    # Replacing the run directory or a folder above it would delete the run.
    resolved, run = output.resolve(), run_dir.resolve()
    if resolved == run or resolved in run.parents:
        raise ValueError(f"--output {output} would replace the run directory {run_dir}; choose another.")
    for folder in resolved.parents:
        if (folder / "saved_model.pb").is_file():
            # TensorFlow Serving's base folder holds numbered versions and is no model itself.
            raise ValueError(
                f"--output {output} is inside the SavedModel {folder}; a model within a model serves as "
                f"neither. For versions, export to BASE/1, BASE/2... with BASE a folder that is not an export."
            )
    if output.exists() and not output.is_dir():
        raise FileExistsError(f"{output} exists and is not a directory; choose another --output.")
    if output.is_dir() and any(output.iterdir()):
        if not force:
            raise FileExistsError(
                f"{output} is not empty; to replace it, use kcap export --force (force=True from Python)."
            )
        if not (output / "saved_model.pb").is_file():
            # --force replaces an earlier export, never an arbitrary folder.
            raise FileExistsError(
                f"{output} is not empty and holds no saved_model.pb; refusing to replace it "
                "even with force. Choose a new or empty --output."
            )


__all__ = [
    "CAPTION_DETAILS",
    "DECODE_IMAGE",
    "SERVING_DEFAULT",
    "SERVING_IMAGES",
    "build_export_archive",
    "captions_from_ids",
    "export_run",
]
