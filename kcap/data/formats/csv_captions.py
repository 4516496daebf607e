"""CSV caption files: a header naming `image` and `caption` columns, optionally `split`.

This is the layout of Kaggle's Flickr8k `captions.txt`:

```
image,caption
1000268201_693b08cb0e.jpg,A child in a pink dress is climbing up a set of stairs in an entry way .
```

A `split` column (`train`, `val`, `test`; `restval` counts as train) fixes the
splits; an empty cell leaves the image to the random split.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from kcap.data.dataset import SPLITS, CaptionDataset, CaptionedImage
from kcap.data.formats.common import (
    IMAGE_SUFFIXES, SPLIT_ALIASES, CaptionFileError, DataProblem, caption_fault, find_images_dir, read_text, record, resolve_image,
    same_image_name,
)


def read_csv_captions(
    path: str | Path, images_dir: str | Path | None = None, errors: list[DataProblem] | None = None
) -> CaptionDataset:
    """Reads a CSV caption file with a header naming `image` and `caption` columns.

    With an `errors` list, a bad row is recorded there (file, line, reason) and
    skipped instead of raising, and a row repeating an earlier one word for word
    is recorded as a warning (it is kept, as in the default mode). A missing or
    bad header still raises: without it no row can be read.

    Example:

    ```python
    dataset = read_csv_captions("flickr8k/captions.txt")  # images in flickr8k/Images
    problems = []
    dataset = read_csv_captions("flickr8k/captions.txt", errors=problems)  # every bad row in problems
    ```
    """
    path = Path(path)
    images_root = find_images_dir(path, images_dir)
    text = read_text(path, errors)
    reader = _reader(text)
    try:
        header = next(reader, None)
        while header is not None and _is_blank(header):  # blank lines before it
            header = next(reader, None)
    except csv.Error as error:
        raise CaptionFileError(f"{path}:{reader.line_num}: the header is not a CSV row ({error}){_json_hint(text)}.") from None
    if header is None:
        raise CaptionFileError(f"{path}: the file is empty; expected a header 'image,caption'.")
    header_line = reader.line_num
    columns = [name.strip().lower() for name in header]
    for required in ("image", "caption", "split"):
        if columns.count(required) > 1:
            raise CaptionFileError(f"{path}:{header_line}: the header {_shown(header)} names {required!r} twice; which one is meant?")
    for required in ("image", "caption"):
        if required not in columns:
            raise CaptionFileError(
                f"{path}:{header_line}: the header {_shown(header)} has no {required!r} column; "
                f"expected a header 'image,caption'{_json_hint(text)}."
            )
    image_col, caption_col = columns.index("image"), columns.index("caption")
    split_col = columns.index("split") if "split" in columns else None

    by_name: dict[str, CaptionedImage] = {}
    first_line: dict[str, int] = {}
    seen_rows: dict[tuple, int] = {}
    offset = 0  # lines before the reader's first: it starts again after a quote left open
    while True:
        line = offset + reader.line_num + 1  # where the row starts; `line_num` is where it ends
        try:
            row = next(reader, None)
        except csv.Error as error:
            # In practice a quote left open for so long that its field outgrew the csv module's
            # limit before it could be seen as rows swallowed: that row is lost, not the rest.
            if "field limit" in str(error):
                reason = (f"a quote (\") opened on this line is not closed, so the lines after it read as one "
                          f"caption of over {csv.field_size_limit()} characters; close the quote (a caption is one line).")
            else:
                reason = f"not a CSV row ({error})."
            record(errors, CaptionFileError(f"{path}:{line}: {reason}"), path, line)
            offset = line
            reader = _reader(_after_line(text, line))
            continue
        if row is None:
            break
        if _is_blank(row):
            continue
        end = offset + reader.line_num
        if end > line and _swallows_rows(row, images_root):
            # An unclosed quote swallows the rows after it into one caption. The rows are
            # read on from the next line, so that only this one is lost (and counted).
            record(errors, CaptionFileError(
                f"{path}:{line}: a quote (\") opened on this line is not closed on it, so lines "
                f"{line}-{end} read as one caption; close the quote (a caption is one line)."
            ), path, line)
            offset = line
            reader = _reader(_after_line(text, line))
            continue
        try:
            _add_row(row, line, path, images_root, columns, image_col, caption_col, split_col, by_name, first_line)
        except CaptionFileError as error:
            record(errors, error, path, line)
            continue
        if errors is not None:
            key = tuple(cell.strip() for cell in row)
            if key in seen_rows:
                errors.append(DataProblem(str(path), line, f"repeats line {seen_rows[key]} word for word.", "warning"))
            else:
                seen_rows[key] = line
    if not by_name and not errors:
        raise CaptionFileError(f"{path}: no caption rows after the header.")
    return CaptionDataset(list(by_name.values()), images_root, source=str(path))


def _reader(text: str):
    # A space after the comma is common in hand-written files: `a.jpg, "A dog, running ."`
    # is then the quoted caption it looks like (the cells are stripped anyway).
    return csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)


def _is_blank(row: list[str]) -> bool:
    return all(not cell.strip() for cell in row)


def _after_line(text: str, line: int) -> str:
    """`text` from line `line + 1` on."""
    return text.split("\n", line)[-1] if text.count("\n") >= line else ""


def _shown(header: list[str]) -> str:
    """The header for a message, cut short: a JSON file read as CSV is one huge header."""
    shown = repr(header)
    return shown if len(shown) <= 120 else f"{shown[:100]}... ({len(header)} fields)"


def _json_hint(text: str) -> str:
    if text.lstrip()[:1] in ("{", "["):
        return "; this looks like JSON: pass --format coco or karpathy, or leave --format auto"
    return ""


def _swallows_rows(row: list[str], images_root: Path) -> bool:
    """Whether a quoted field holds lines that are rows of their own (`NAME.jpg,...`).

    A quoted caption may hold a line break; one that holds rows is a quote left
    open. A row starts with an image: a name with an image suffix, or a file there.
    """
    for cell in row:
        for text in cell.split("\n")[1:]:
            name, comma, _ = text.partition(",")
            name = name.strip().strip('"')
            if comma and name and (name.lower().endswith(IMAGE_SUFFIXES) or _is_file(images_root / name)):
                return True
    return False


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long, or with a NUL
        return False


def _add_row(row, line, path, images_root, columns, image_col, caption_col, split_col, by_name, first_line) -> None:
    """Adds one CSV row to `by_name`, or raises a `CaptionFileError` (and adds nothing)."""
    if len(row) > len(columns):
        raise CaptionFileError(
            f"{path}:{line}: expected {len(columns)} fields, found {len(row)}; "
            f"quote captions that contain commas."
        )
    if len(row) < len(columns):
        raise CaptionFileError(
            f"{path}:{line}: expected {len(columns)} fields ({', '.join(columns)}), found {len(row)}."
        )
    name, caption = row[image_col].strip(), row[caption_col].strip()
    if not name:
        raise CaptionFileError(f"{path}:{line}: the image field is empty.")
    fault = caption_fault(caption)
    if fault:
        raise CaptionFileError(f"{path}:{line}: the caption of {name!r} {fault}.")
    name = same_image_name(name, images_root)
    split = None
    if split_col is not None:
        cell = row[split_col].strip().lower()
        if cell and cell not in SPLIT_ALIASES:
            raise CaptionFileError(
                f"{path}:{line}: unknown split {cell!r}; expected one of {SPLITS} (or restval)."
            )
        split = SPLIT_ALIASES.get(cell)
    image = by_name.get(name)
    if image is None:
        image_path = resolve_image(images_root, name, f"{path}:{line}")
        image = by_name[name] = CaptionedImage(image_path, [], split)
        first_line[name] = line
    elif image.split != split:
        # Splits are by image: one image in two splits would leak test captions into training.
        raise CaptionFileError(
            f"{path}:{line}: {name!r} is in split {split!r} here but in {image.split!r} "
            f"at line {first_line[name]}; all rows of an image must name the same split."
        )
    image.captions.append(caption)
