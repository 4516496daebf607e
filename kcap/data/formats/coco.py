"""COCO caption files (`captions_train2014.json`, `captions_val2017.json`, ...).

```
{"images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", ...}, ...],
 "annotations": [{"image_id": 42, "id": 1, "caption": "A dog on a sofa."}, ...]}
```

Images keep the order of `images`; each image's captions keep the order of
`annotations`. An image with no annotation is left out (there is nothing to
learn from it). A COCO file carries no split: every image gets split `None` and
kcap's random split (`--val-fraction`, `--test-fraction`, `--seed`) applies. For
the usual Karpathy splits of COCO, read Karpathy's `dataset_coco.json` instead.
COCO images usually live in a folder named after the file (`train2014/`): pass
it as `images_dir`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kcap.data.dataset import CaptionDataset, CaptionedImage
from kcap.data.formats.common import (
    CaptionFileError, DataProblem, caption_fault, find_images_dir, json_field, json_list, load_json, record,
    resolve_image, same_image_name,
)


def read_coco_captions(
    path: str | Path, images_dir: str | Path | None = None, errors: list[DataProblem] | None = None
) -> CaptionDataset:
    """Reads a COCO captions JSON file.

    With an `errors` list, a bad entry of `images` or `annotations` is recorded
    there and skipped instead of raising; a file that is not valid JSON, or has
    no `images` / `annotations` lists, still raises.

    Example:

    ```python
    dataset = read_coco_captions("annotations/captions_val2014.json", images_dir="val2014")
    ```
    """
    path = Path(path)
    return coco_dataset(load_json(path), path, find_images_dir(path, images_dir), errors)


def coco_dataset(data: Any, path: Path, images_root: Path, errors: list[DataProblem] | None = None) -> CaptionDataset:
    """The `CaptionDataset` of already-parsed COCO JSON `data` read from `path`."""
    entries = json_list(data, "images", path)
    annotations = json_list(data, "annotations", path)
    by_id: dict[int | str, CaptionedImage] = {}
    id_where: dict[int | str, str] = {}
    name_where: dict[str, str] = {}
    left_out: dict[int | str, str] = {}  # ids of entries refused above: their annotations go with them
    for index, entry in enumerate(entries):
        where = f"{path}: images[{index}]"
        image_id = entry.get("id") if isinstance(entry, dict) else None
        try:
            image_id = json_field(entry, "id", (int, str), where)
            file_name = same_image_name(json_field(entry, "file_name", str, where), images_root)
            if image_id in by_id:
                raise CaptionFileError(f"{where}: image id {image_id!r} is already used by {id_where[image_id]}.")
            if file_name in name_where:
                raise CaptionFileError(f"{where}: file_name {file_name!r} is already used by {name_where[file_name]}.")
            by_id[image_id] = CaptionedImage(resolve_image(images_root, file_name, where), [], source_id=image_id)
        except CaptionFileError as error:
            record(errors, error, path)
            # A float id (1.0) is refused, yet annotations name it as 1: theirs go with it too.
            if isinstance(image_id, (int, float, str)) and image_id not in by_id:
                left_out.setdefault(image_id, f"images[{index}]")
            continue
        id_where[image_id], name_where[file_name] = f"images[{index}]", f"images[{index}]"
    for index, annotation in enumerate(annotations):
        where = f"{path}: annotations[{index}]"
        try:
            image_id = json_field(annotation, "image_id", (int, str), where)
            caption = json_field(annotation, "caption", str, where)
            fault = caption_fault(caption)
            if fault:
                raise CaptionFileError(f"{where}: the caption {fault}.")
            if image_id in left_out:
                continue  # its image entry is reported above; its captions are left out with it
            if image_id not in by_id:
                raise CaptionFileError(f"{where}: image_id {image_id!r} is not the id of any entry of 'images'.")
        except CaptionFileError as error:
            record(errors, error, path)
            continue
        by_id[image_id].captions.append(caption.strip())
    images = [image for image in by_id.values() if image.captions]
    uncaptioned = [image for image in by_id.values() if not image.captions]
    if uncaptioned and errors is not None:
        # Left out by design, but a conversion that lost annotations would otherwise go unseen.
        errors.append(DataProblem(str(path), None, (
            f"{len(uncaptioned)} of the {len(by_id)} entries of 'images' have no caption in 'annotations' "
            f"and are left out (the first: {uncaptioned[0].path.name})."
        ), "warning"))
    if not images and not errors:
        raise CaptionFileError(f"{path}: no image has a caption ({len(entries)} images, {len(annotations)} annotations).")
    return CaptionDataset(images, images_root, source=str(path))
