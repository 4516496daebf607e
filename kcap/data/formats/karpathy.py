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
    SPLIT_ALIASES, CaptionFileError, DataProblem, caption_fault, find_images_dir, json_field, json_list, load_json,
    record, resolve_image, same_image_name,
)


def read_karpathy_captions(
    path: str | Path, images_dir: str | Path | None = None, errors: list[DataProblem] | None = None
) -> CaptionDataset:
    """Reads a Karpathy split JSON file; its splits are kept.

    With an `errors` list, a bad entry of `images` is recorded there and
    skipped (with all its sentences) instead of raising; a bad sentence is
    recorded and skipped alone, as a bad row of a CSV file is.

    Example:

    ```python
    dataset = read_karpathy_captions("dataset_coco.json", images_dir="coco")  # coco/train2014, coco/val2014
    ```
    """
    path = Path(path)
    return karpathy_dataset(load_json(path), path, find_images_dir(path, images_dir), errors)


def karpathy_dataset(data: Any, path: Path, images_root: Path, errors: list[DataProblem] | None = None) -> CaptionDataset:
    """The `CaptionDataset` of already-parsed Karpathy JSON `data` read from `path`."""
    images: list[CaptionedImage] = []
    seen: dict[str, int] = {}
    for index, entry in enumerate(json_list(data, "images", path)):
        try:
            name, image = _entry_image(entry, f"{path}: images[{index}]", images_root, seen, errors, path)
        except CaptionFileError as error:
            record(errors, error, path)
            continue
        seen[name] = index
        images.append(image)
    if not images and not errors:
        raise CaptionFileError(f"{path}: 'images' is empty.")
    return CaptionDataset(images, images_root, source=str(path))


def _entry_image(
    entry: Any, where: str, images_root: Path, seen: dict[str, int], errors: list[DataProblem] | None, path: Path
) -> tuple[str, CaptionedImage]:
    """The image name and `CaptionedImage` of one entry of 'images', or a `CaptionFileError`."""
    filename = json_field(entry, "filename", str, where)
    filepath = json_field(entry, "filepath", str, where, optional=True)
    split = json_field(entry, "split", str, where)
    if split not in SPLIT_ALIASES:
        raise CaptionFileError(f"{where}: unknown split {split!r}; expected one of {SPLITS} or restval.")
    sentences = json_field(entry, "sentences", list, where)
    if not sentences:
        raise CaptionFileError(f"{where}: 'sentences' is empty; every image needs a caption.")
    # Posix joining: the file names the path with '/', whatever the platform.
    name = str(PurePosixPath(filepath.strip(), filename)) if filepath and filepath.strip() else filename
    name = same_image_name(name, images_root)
    if name in seen:
        raise CaptionFileError(f"{where}: image {name!r} already appears at images[{seen[name]}].")
    image_path = resolve_image(images_root, name, where)
    captions = []
    for number, sentence in enumerate(sentences):
        try:
            caption = json_field(sentence, "raw", str, f"{where}.sentences[{number}]")
            fault = caption_fault(caption)
            if fault:
                raise CaptionFileError(f"{where}.sentences[{number}]: the caption {fault}.")
        except CaptionFileError as error:
            record(errors, error, path)
            continue
        captions.append(caption.strip())
    if not captions:
        raise CaptionFileError(f"{where}: none of its {len(sentences)} sentences is a caption (see above).")
    cocoid = entry.get("cocoid")  # COCO's own id; the Flickr files have none
    source_id = cocoid if isinstance(cocoid, (int, str)) and not isinstance(cocoid, bool) else None
    return name, CaptionedImage(image_path, captions, SPLIT_ALIASES[split], source_id)
