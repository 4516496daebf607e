"""Loading a trained run and captioning images with it."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from kcap import compat
from kcap.data.check import image_errors
from kcap.data.pipeline import image_dataset
from kcap.model.captioner import Captioner
from kcap.model.model_files import load_keras_file
from kcap.text.vocabulary import Vocabulary
from kcap.training.config import TrainConfig
from kcap.training.run_dir import RunDir

log = logging.getLogger("kcap")


@dataclasses.dataclass
class TrainedRun:
    """A trained captioner with its vocabulary and settings; `load_run` makes one.

    Example:

    ```python
    trained = load_run("runs/shapes")
    for result in trained.caption_files(["a.jpg", "b.jpg"], beam_size=3):
        print(result["image"], result["caption"])
    ```
    """

    model: Captioner
    vocabulary: Vocabulary
    config: TrainConfig
    run: RunDir
    model_file: Path  # the checkpoint `model` was loaded from

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.model.image_size)

    def caption_files(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 32,
        progress: bool = False,
        beam_size: int = 1,
        temperature: float | None = None,
        no_repeat_ngram: int = 0,
    ) -> list[dict]:
        """Captions image files: `[{"image", "caption", "score", "attention"}]`.

        Greedy by default; `beam_size > 1` runs beam search and `temperature`
        samples; `no_repeat_ngram` n > 0 keeps greedy and beam search from
        repeating an n-gram (see `Captioner.generate`). Sampling is seeded with the batch
        number, so the same files in the same order give the same captions.

        Example: `run.caption_files(["a.jpg", "b.jpg"], beam_size=3)[0]["caption"]`
        """
        # In full: decoding is the work anyway, and damage inside a file would otherwise stop a batch unnamed.
        bad = image_errors([str(p) for p in paths], full_decode=True)
        if bad:
            raise ValueError("Cannot caption: " + "; ".join(str(p) for p in bad))
        results = []
        batches = image_dataset([str(p) for p in paths], self.image_size, batch_size)
        total = -(-len(paths) // batch_size)
        it = iter(paths)
        for number, batch in enumerate(
            tqdm(batches, total=total, desc="captioning", unit="batch", disable=not progress)
        ):
            ids, attention, scores = self.model.generate(
                batch, beam_size=beam_size, temperature=temperature, seed=number, no_repeat_ngram=no_repeat_ngram
            )
            for row, weights, score in zip(ids.numpy(), attention.numpy(), scores.numpy()):
                caption = self.vocabulary.decode(row)
                num_words = len(caption.split()) if caption else 0
                results.append({
                    "image": str(next(it)),
                    "caption": caption,
                    "score": float(score),
                    "attention": weights[: num_words + 1],
                })
        return results


def load_run(run_dir: str | Path, checkpoint: str = "best") -> TrainedRun:
    """Loads the model (`best` or `last`), vocabulary and config of a run directory.

    `best` is the best epoch by the run's `--monitor`; where it is missing, the
    final model is used, with a warning (and the other way round for `last`).
    """
    run = RunDir(Path(run_dir))
    if not run.exists():
        raise FileNotFoundError(f"{run.path} is not a kcap run directory (no config.json).")
    config = TrainConfig.load(run.config)
    vocabulary = Vocabulary.load(run.vocabulary)
    model_file = run.model_path(checkpoint)
    if checkpoint == "best" and model_file != run.best_model:
        log.warning("%s is missing; using %s (the last epoch).", run.best_model, model_file)
    elif checkpoint == "last" and model_file != run.final_model:
        log.warning("%s is missing (the run has not finished); using %s.", run.final_model, model_file)
    other, other_file = ("last", run.final_model) if model_file == run.best_model else ("best", run.best_model)
    hint = f"Use --checkpoint {other}, or train a new run." if other_file.is_file() else "Train a new run."
    model = load_keras_file(model_file, hint)
    # A mixed-precision run's backbone and preprocessing come back with the mixed policy their
    # configs recorded; captioning, evaluation and export run in float32, like any other run's.
    compat.set_dtype_policy_everywhere(model, "float32")
    if model.vocabulary_size != len(vocabulary):
        raise ValueError(
            f"{run.path}: the model expects {model.vocabulary_size} words but vocab.json has "
            f"{len(vocabulary)}; the run directory is inconsistent."
        )
    return TrainedRun(model, vocabulary, config, run, model_file)


