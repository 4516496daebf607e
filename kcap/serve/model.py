"""A kcap SavedModel as `kcap serve` uses it: decode one image, caption a batch, describe itself.

TensorFlow alone, no kcap model code: the export's endpoints do all the work
(`kcap.export.signatures` names them), so a run and an export serve alike.

Example:

```python
model = ServedModel.load("exported/shapes/1")
pixels = model.decode(open("a.jpg", "rb").read())      # uint8 (H, W, 3)
result = model.caption([pixels])[0]                     # {"caption", "score", "candidates", ...}
```
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

import kcap
from kcap.export.signatures import CAPTION_DETAILS, DECODE_IMAGE, SERVING_DEFAULT, SERVING_IMAGES

# Attention weights are sent rounded: the page draws them, and a grid's JSON stays short.
ATTENTION_DECIMALS = 5


class ImageDecodeError(ValueError):
    """TensorFlow could not decode an image's bytes (truncated, damaged, or a kind it refuses)."""


class ServedModel:
    """A loaded SavedModel written by `kcap export`; `load` makes one.

    `decode` and `caption` are safe to call from several threads. An export
    written before `decode_image` and `caption_details` existed serves its
    captions through `serving_default`, one request at a time, without
    candidates or attention; `missing` names what it lacks.
    """

    def __init__(self, loaded, info: dict, source: str):
        self._loaded = loaded
        self.info = info
        self.source = source
        self.image_size = tuple(int(s) for s in info["image_size"])
        self.beam_size = int(info.get("beam_size", 1))
        self.grid = tuple(int(s) for s in info["attention_grid"]) if "attention_grid" in info else None
        self.missing = [name for name in (DECODE_IMAGE, CAPTION_DETAILS) if name not in loaded.signatures]
        self.model_calls = 0
        self.images_captioned = 0
        self.largest_batch = 0
        self._count_lock = threading.Lock()

    @classmethod
    def load(cls, export_dir: str | Path, source: str = "export") -> ServedModel:
        """Loads `export_dir`; `source` ("run" or "export") is reported in the metadata."""
        export_dir = Path(export_dir)
        if not (export_dir / "saved_model.pb").is_file():
            raise FileNotFoundError(
                f"{export_dir} holds no saved_model.pb; give a folder written by kcap export "
                "(for TensorFlow Serving's layout, the numbered version folder, e.g. exported/shapes/1)."
            )
        info_file = export_dir / "assets" / "export.json"
        if not info_file.is_file():
            raise FileNotFoundError(f"{export_dir} has no assets/export.json: it was not written by kcap export.")
        info = json.loads(info_file.read_text(encoding="utf-8"))
        config_file = export_dir / "assets" / "config.json"
        if "decoder" not in info and config_file.is_file():
            info["decoder"] = json.loads(config_file.read_text(encoding="utf-8")).get("decoder", "gru_attention")
        loaded = tf.saved_model.load(str(export_dir))
        if SERVING_DEFAULT not in loaded.signatures or SERVING_IMAGES not in loaded.signatures:
            raise ValueError(f"{export_dir} lacks the serving_default/serving_images signatures of a kcap export.")
        return cls(loaded, info, source)

    @property
    def batches(self) -> bool:
        """Whether requests can be captioned together (the export decodes one image on its own)."""
        return not self.missing

    def metadata(self) -> dict:
        """What `GET /v1/models/kcap` reports under `metadata`."""
        return {
            "kcap_version": self.info.get("kcap_version", kcap.__version__),
            "image_size": list(self.image_size),
            "vocabulary_size": self.info.get("vocabulary_size"),
            "beam_size": self.beam_size,
            "decoder": self.info.get("decoder"),
            "source": self.source,
            "attention_grid": list(self.grid) if self.grid else None,
            "missing_signatures": self.missing,
            "model_calls": self.model_calls,
            "images_captioned": self.images_captioned,
            "largest_batch": self.largest_batch,
        }

    def warm_up(self) -> None:
        """Runs each endpoint once, so that the first request does not wait for TensorFlow's first call."""
        blank = tf.io.encode_png(tf.zeros([*self.image_size, 3], tf.uint8)).numpy()
        if self.missing:
            self._loaded.signatures[SERVING_DEFAULT](image_bytes=tf.constant([blank]))
        else:
            self._loaded.signatures[CAPTION_DETAILS](images=tf.constant(self.decode(blank)[None], tf.float32))

    def decode(self, data: bytes) -> np.ndarray:
        """One image's bytes → the uint8 (H, W, 3) pixels `kcap caption` would caption.

        Raises `ImageDecodeError` where TensorFlow cannot decode them.
        """
        try:
            pixels = self._loaded.signatures[DECODE_IMAGE](image_bytes=tf.constant(data, tf.string))["pixels"]
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise ImageDecodeError(_first_line(error)) from None
        return pixels.numpy()

    def caption(self, images: list[np.ndarray]) -> list[dict]:
        """Decoded images (see `decode`) → one result per image, captioned as one batch.

        Each result: `caption`, `score`, `candidates` ([{caption, score}], best
        first), `words`, `attention` (a grid per word) and `grid`.
        """
        batch = tf.constant(np.stack(images).astype(np.float32))
        out = self._loaded.signatures[CAPTION_DETAILS](images=batch)
        self._count(len(images))
        results = []
        for index in range(len(images)):
            caption = out["caption"][index].numpy().decode()
            words = caption.split()
            candidates = [
                {"caption": text.decode(), "score": float(score)}
                for text, score in zip(out["candidates"][index].numpy(), out["candidate_scores"][index].numpy())
                if np.isfinite(score)
            ]
            rows = out["attention"][index].numpy()[: len(words)].reshape(len(words), *self.grid)
            results.append({
                "caption": caption,
                "score": float(out["score"][index]),
                "candidates": candidates,
                "words": words,
                "attention": rows.astype(np.float64).round(ATTENTION_DECIMALS).tolist(),
                "grid": list(self.grid),
            })
        return results

    def caption_bytes(self, data: bytes) -> dict:
        """One image's bytes → caption and score through `serving_default`: for exports without `caption_details`."""
        try:
            out = self._loaded.signatures[SERVING_DEFAULT](image_bytes=tf.constant([data], tf.string))
        except (tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError) as error:
            raise ImageDecodeError(_first_line(error)) from None
        self._count(1)
        caption = out["caption"][0].numpy().decode()
        score = float(out["score"][0])
        return {
            "caption": caption, "score": score, "candidates": [{"caption": caption, "score": score}],
            "words": caption.split(), "attention": None, "grid": None,
        }

    def _count(self, images: int) -> None:
        with self._count_lock:
            self.model_calls += 1
            self.images_captioned += images
            self.largest_batch = max(self.largest_batch, images)


def _first_line(error: Exception) -> str:
    """What a TensorFlow error says about the input, without node names, graph dumps and tracebacks.

    >>> _first_line(ValueError("{{function_node f}} Invalid PNG data, size 3000\\n\\t [[{{node DecodeImage}}]]"))
    'Invalid PNG data, size 3000'
    """
    message = re.sub(r"\{\{[^}]*\}\}", "", getattr(error, "message", str(error)))
    lines = [line.strip() for line in message.splitlines() if line.strip() and not line.strip().startswith("[[")]
    if not lines:
        return type(error).__name__
    # A graph's error: its own message comes last, after where the failing node was defined.
    return lines[-1] if lines[0].startswith("Graph execution error") else lines[0]
