"""Reading caption files into a `CaptionDataset`.

Supported here: CSV with a header `image,caption` (optionally a `split`
column), the layout of Kaggle's Flickr8k `captions.txt`.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from kcap.data.dataset import SPLITS, CaptionDataset, CaptionedImage


class CaptionFileError(ValueError):
    """A caption file that cannot be read; the message names file and line."""


def find_images_dir(caption_file: Path, images_dir: str | Path | None = None) -> Path:
    """`images_dir` if given, else `Images/` or `images/` beside the caption file."""
    if images_dir is not None:
        path = Path(images_dir)
        if not path.is_dir():
            raise FileNotFoundError(f"Images folder {path} does not exist.")
        return path
    for name in ("Images", "images"):
        candidate = caption_file.parent / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"No images folder beside {caption_file}: expected {caption_file.parent / 'Images'} "
        f"or {caption_file.parent / 'images'}; pass --images DIR to name it."
    )


def resolve_image(images_dir: Path, name: str, where: str) -> Path:
    """Joins `name` to `images_dir`, refusing names that escape the folder."""
    root = images_dir.resolve()
    path = (images_dir / name).resolve()
    if root != path and root not in path.parents:
        raise CaptionFileError(f"{where}: image path {name!r} resolves outside {images_dir}.")
    return images_dir / name


def read_csv_captions(path: str | Path, images_dir: str | Path | None = None) -> CaptionDataset:
    """Reads a CSV caption file with a header naming `image` and `caption` columns.

    Example:

    ```python
    dataset = read_csv_captions("flickr8k/captions.txt")  # images in flickr8k/Images
    ```
    """
    path = Path(path)
    images_root = find_images_dir(path, images_dir)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = path.read_bytes()[: error.start].count(b"\n") + 1
        raise CaptionFileError(f"{path}:{line}: text is not UTF-8 ({error.reason}).") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise CaptionFileError(f"{path}: the file is empty; expected a header 'image,caption'.")
    columns = [name.strip().lower() for name in header]
    for required in ("image", "caption"):
        if required not in columns:
            raise CaptionFileError(
                f"{path}:1: the header {header} has no {required!r} column; "
                f"expected a header 'image,caption'."
            )
    image_col, caption_col = columns.index("image"), columns.index("caption")
    split_col = columns.index("split") if "split" in columns else None

    by_name: dict[str, CaptionedImage] = {}
    for row in reader:
        line = reader.line_num
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(columns):
            raise CaptionFileError(
                f"{path}:{line}: expected {len(columns)} fields, found {len(row)}; "
                f"quote captions that contain commas."
            )
        name, caption = row[image_col].strip(), row[caption_col].strip()
        if not name:
            raise CaptionFileError(f"{path}:{line}: the image field is empty.")
        if not caption:
            raise CaptionFileError(f"{path}:{line}: the caption of {name!r} is empty.")
        split = None
        if split_col is not None:
            split = row[split_col].strip().lower() or None
            if split == "restval":
                split = "train"
            if split is not None and split not in SPLITS:
                raise CaptionFileError(
                    f"{path}:{line}: unknown split {split!r}; expected one of {SPLITS}."
                )
        image = by_name.get(name)
        if image is None:
            image_path = resolve_image(images_root, name, f"{path}:{line}")
            image = by_name[name] = CaptionedImage(image_path, [], split)
        image.captions.append(caption)
    if not by_name:
        raise CaptionFileError(f"{path}: no caption rows after the header.")
    return CaptionDataset(list(by_name.values()), images_root, source=str(path))


FORMATS = ("auto", "csv")


def read_captions(
    path: str | Path, images_dir: str | Path | None = None, format: str = "auto"
) -> CaptionDataset:
    """Reads a caption file, or the caption file inside a folder, in any supported format."""
    if format not in FORMATS:
        raise ValueError(f"Unknown caption format {format!r}; expected one of {FORMATS}.")
    path = Path(path)
    if path.is_dir():
        for name in ("captions.csv", "captions.txt"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(
                f"No caption file in {path}: expected captions.csv or captions.txt."
            )
    if not path.is_file():
        raise FileNotFoundError(f"Caption file {path} does not exist.")
    return read_csv_captions(path, images_dir)
