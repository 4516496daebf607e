"""Captioning validation images during `fit`: BLEU-4 and CIDEr-D in the logs, captions in TensorBoard."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from PIL import Image

from kcap.data.feature_cache import FeatureCache
from kcap.data.pipeline import feature_batcher, image_dataset
from kcap.evaluation.attention_plot import attention_figure, figure_to_array, image_pixels
from kcap.evaluation.metrics import caption_metrics
from kcap.text.vocabulary import END_ID, Vocabulary
from kcap.training.distribute import mean_over_workers

InputBatches = tf.data.Dataset | Iterable[Mapping] | Callable[[], Iterable[Mapping]]


def caption_words(ids: np.ndarray, vocabulary: Vocabulary) -> list[str]:
    """The words of one generated row, one per decoding step up to `<end>`.

    Unlike `Vocabulary.decode`, nothing is skipped, so word `i` is the
    token of step `i` and goes with attention row `i`.

    >>> vocab = Vocabulary(["<pad>", "<start>", "<end>", "<unk>", "red", "circle"], max_length=5)
    >>> caption_words(np.array([4, 5, 2, 0]), vocab)
    ['red', 'circle']
    """
    words = []
    for token in ids:
        if int(token) == END_ID:
            break
        words.append(vocabulary.words[int(token)])
    return words


class ValidationCaptioning(keras.callbacks.Callback):
    """Every `every` epochs, captions validation images and scores them.

    Writes `val_bleu4` and `val_cider` (`kcap.evaluation.metrics`, i.e.
    pycocoevalcap's BLEU-4 and CIDEr-D; CIDEr-D's IDF comes from these
    images' references, so it depends on the subset chosen) into the epoch
    `logs`, where `EarlyStopping`, `ModelCheckpoint`, `History` and
    Keras' `TensorBoard` (as `epoch_bleu4`/`epoch_cider` in its
    `validation` run) see them. It also scores the last epoch of `fit`.

    Ordering: Keras calls `on_epoch_end` of the callbacks in list order with
    one shared `logs` dict, so this callback must come **before** any
    callback that reads `val_bleu4`/`val_cider` (checkpoints, early
    stopping, history files, TensorBoard); Keras appends its own `History`
    last. On epochs that are not scored the keys are absent, as `val_loss`
    is with `validation_freq`; monitor them with `every=1`.

    With `log_dir`, the first `num_examples` images are also written to
    TensorBoard at each scored epoch (step = epoch index, as Keras does):
    a text summary `captions/NN` (the generated caption beside the
    references) and an image summary `attention/NN` (one attention panel
    per generated word, see `kcap.evaluation.attention_plot`). Keras'
    TensorBoard callback already logs the learning rate
    (`epoch_learning_rate` in its `train` run), so this one does not.

    Args:
        image_paths: the validation image files, in the order `inputs` yields them.
        references: the reference captions of each image.
        inputs: batches of model inputs aligned with `image_paths`:
            `{"images": ...}` or, with a feature cache, `{"features": ...}`.
            A `tf.data.Dataset`, a re-iterable sequence of dicts, or a
            function returning an iterable; `(inputs, ...)` tuples are
            accepted and their first element used.
        vocabulary: turns token ids into words.
        log_dir: TensorBoard directory for captions and attention pictures
            (e.g. `RUN/logs/captions`); `None` writes none.
        every: score every this many epochs.
        num_examples: how many images (the first ones) go to TensorBoard.
        max_length: most words per caption (the model's default if `None`).
        beam_size, temperature: decoding options passed to `model.generate`.

    Example:

    ```python
    val = ValidationCaptioning(
        paths, references, image_dataset(paths, (96, 96), 32), vocabulary,
        log_dir="run/logs/captions", every=1)
    model.fit(train_ds, epochs=10, callbacks=[
        val,  # first: the callbacks below read val_cider
        keras.callbacks.EarlyStopping("val_cider", mode="max", patience=3),
        keras.callbacks.TensorBoard("run/logs"),
    ])
    ```
    """

    def __init__(
        self,
        image_paths: Sequence[str | Path],
        references: Sequence[Sequence[str]],
        inputs: InputBatches,
        vocabulary: Vocabulary,
        log_dir: str | Path | None = None,
        every: int = 1,
        num_examples: int = 4,
        max_length: int | None = None,
        beam_size: int = 1,
        temperature: float | None = None,
    ):
        super().__init__()
        if len(image_paths) != len(references):
            raise ValueError(f"{len(image_paths)} validation images but {len(references)} reference lists.")
        if not image_paths:
            raise ValueError("ValidationCaptioning needs at least one validation image.")
        if int(every) < 1:
            raise ValueError(f"every must be at least 1, got {every}.")
        self.image_paths = [str(p) for p in image_paths]
        self.references = [list(r) for r in references]
        self.inputs = inputs
        self.vocabulary = vocabulary
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.every = int(every)
        self.num_examples = max(0, min(int(num_examples), len(self.image_paths)))
        self.max_length = max_length
        self.beam_size = int(beam_size)
        self.temperature = temperature
        self.last_scores: dict | None = None
        self._writer = None
        self._pixels: list[np.ndarray] | None = None

    @classmethod
    def from_files(
        cls,
        image_paths: Sequence[str | Path],
        references: Sequence[Sequence[str]],
        vocabulary: Vocabulary,
        image_size: Sequence[int],
        batch_size: int = 32,
        feature_cache: FeatureCache | None = None,
        **kwargs,
    ) -> ValidationCaptioning:
        """Feeds the model the decoded image files (`{"images": ...}`) or, given a
        `feature_cache` that holds every path, their cached features (`{"features": ...}`).

        The pictures in TensorBoard come from the files either way.
        """
        paths = [str(p) for p in image_paths]
        if feature_cache is None:
            inputs = image_dataset(paths, image_size, batch_size)
        else:
            rows = tf.range(len(paths), dtype=tf.int64)
            inputs = feature_batcher(feature_cache, paths, batch_size)(rows).prefetch(tf.data.AUTOTUNE)
        return cls(image_paths, references, inputs, vocabulary, **kwargs)

    # -- decoding ------------------------------------------------------------

    def _batches(self) -> Iterable[Mapping]:
        batches = self.inputs() if callable(self.inputs) and not isinstance(self.inputs, tf.data.Dataset) else self.inputs
        for batch in batches:
            if isinstance(batch, tuple | list):
                batch = batch[0]
            if not isinstance(batch, Mapping):
                raise TypeError(
                    f"ValidationCaptioning inputs must yield dicts of model inputs, got {type(batch).__name__}."
                )
            yield batch

    def caption(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Token ids and attention weights of every validation image, in order."""
        ids, attention = [], []
        for batch in self._batches():
            batch_ids, batch_attention, _ = self.model.generate(
                batch, max_length=self.max_length, beam_size=self.beam_size, temperature=self.temperature
            )
            ids.extend(np.asarray(batch_ids))
            attention.extend(np.asarray(batch_attention))
        if len(ids) != len(self.references):
            raise ValueError(
                f"The validation inputs yielded {len(ids)} images but there are {len(self.references)} "
                f"reference lists; inputs must hold one entry per image, in the order of image_paths."
            )
        return ids, attention

    # -- the callback --------------------------------------------------------

    def _scored(self, epoch: int) -> bool:
        last = (self.params or {}).get("epochs")
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def on_epoch_end(self, epoch, logs=None):
        if not self._scored(epoch):
            return
        ids, attention = self.caption()
        # Scored as `kcap evaluate` scores: Vocabulary.decode, as TrainedRun.caption_files does.
        hypotheses = [self.vocabulary.decode(row) for row in ids]
        scores = caption_metrics(hypotheses, self.references, meteor=False)
        self.last_scores = {"epoch": epoch + 1, **scores}
        if logs is not None:
            # Every worker of a multi-worker run scores, and they agree on one value.
            logs.update(mean_over_workers(
                {"val_bleu4": scores["bleu4"], "val_cider": scores["cider"]}, self.model.distribute_strategy
            ))
        if self.log_dir is not None and self.num_examples:
            self._write_examples(epoch, ids, attention)

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # -- TensorBoard ---------------------------------------------------------

    def _example_pixels(self) -> list[np.ndarray]:
        # Loaded from the files even when the model reads cached features,
        # which hold no pixels to draw on.
        if self._pixels is None:
            self._pixels = []
            for path in self.image_paths[: self.num_examples]:
                image = Image.fromarray(image_pixels(path))  # as the model sees it: a 16-bit PNG too
                image.thumbnail((256, 256))
                self._pixels.append(np.asarray(image))
        return self._pixels

    def _write_examples(self, epoch: int, ids: list[np.ndarray], attention: list[np.ndarray]) -> None:
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        feature_shape = self.model.feature_shape
        with self._writer.as_default(step=epoch):
            for index, pixels in enumerate(self._example_pixels()):
                words = caption_words(ids[index], self.vocabulary)
                tf.summary.text(f"captions/{index:02d}", self._markdown(index, words))
                # An empty caption still shows where the decoder looked to say <end>.
                shown = words or ["<end>"]
                fig = attention_figure(pixels, shown, attention[index], feature_shape)
                tf.summary.image(f"attention/{index:02d}", figure_to_array(fig)[None])
        self._writer.flush()

    def _markdown(self, index: int, words: list[str]) -> str:
        references = "\n".join(f"{n}. {r}" for n, r in enumerate(self.references[index], 1))
        caption = " ".join(words) if words else "*(empty caption)*"
        name = Path(self.image_paths[index]).name
        return f"**{name}**\n\n**generated:** {caption}\n\n**references:**\n\n{references}"


def subset(items: Sequence, count: int) -> list[int]:
    """Indices of `count` items spread evenly over `items` (all if fewer), deterministic.

    For picking a validation subset to caption each epoch.

    >>> subset(list(range(10)), 3)
    [0, 3, 6]
    """
    total = len(items)
    if count >= total:
        return list(range(total))
    step = total / count
    return [int(math.floor(i * step)) for i in range(count)]
