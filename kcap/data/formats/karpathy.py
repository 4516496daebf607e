"""Karpathy split files (`dataset_flickr8k.json`, `dataset_flickr30k.json`, `dataset_coco.json`).

```
{"dataset": "coco",
 "images": [{"filepath": "val2014", "filename": "COCO_val2014_000000391895.jpg", "split": "test",
             "sentences": [{"raw": "A man with a red helmet on a small moped on a dirt road.", ...}, ...]},
            ...]}
```

The image path is `images_dir / filepath / filename` (`filepath` is optional;
the Flickr files have none). Splits: `train`, `val`, `test`, and `restval` (the
COCO val2014 images outside Karpathy's val and test) read as `train`. Images
keep the file's order, captions the order of `sentences`.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

from kcap.data.dataset import SPLITS, CaptionDataset, CaptionedImage
from kcap.data.formats.common import (
    SPLIT_ALIASES, CaptionFileError, find_images_dir, json_field, json_list, load_json, resolve_image,
)


def read_karpathy_captions(path: str | Path, images_dir: str | Path | None = None) -> CaptionDataset:
    """Reads a Karpathy split JSON file; its splits are kept.

    Example:

    ```python
    dataset = read_karpathy_captions("dataset_coco.json", images_dir="coco")  # coco/train2014, coco/val2014
    ```
    """
    path = Path(path)
    return karpathy_dataset(load_json(path), path, find_images_dir(path, images_dir))


def karpathy_dataset(data: Any, path: Path, images_root: Path) -> CaptionDataset:
    """The `CaptionDataset` of already-parsed Karpathy JSON `data` read from `path`."""
    images: list[CaptionedImage] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(json_list(data, "images", path)):
        where = f"{path}: images[{index}]"
        filename = json_field(entry, "filename", str, where)
        filepath = json_field(entry, "filepath", str, where, optional=True)
        split = json_field(entry, "split", str, where)
        if split not in SPLIT_ALIASES:
            raise CaptionFileError(f"{where}: unknown split {split!r}; expected one of {SPLITS} or restval.")
        sentences = json_field(entry, "sentences", list, where)
        if not sentences:
            raise CaptionFileError(f"{where}: 'sentences' is empty; every image needs a caption.")
        captions = [
            json_field(sentence, "raw", str, f"{where}.sentences[{number}]").strip()
            for number, sentence in enumerate(sentences)
        ]
        # Posix joining: the file names the path with '/', whatever the platform.
        name = str(PurePosixPath(filepath.strip(), filename)) if filepath and filepath.strip() else filename
        if name in seen:
            raise CaptionFileError(f"{where}: image {name!r} already appears at images[{seen[name]}].")
        seen[name] = index
        images.append(CaptionedImage(resolve_image(images_root, name, where), captions, SPLIT_ALIASES[split]))
    if not images:
        raise CaptionFileError(f"{path}: 'images' is empty.")
    return CaptionDataset(images, images_root, source=str(path))
