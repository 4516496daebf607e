"""Flickr8k / Flickr30k token files and the official Flickr8k split lists.

A token file (`Flickr8k.token.txt`; Flickr30k's `results_20130124.token`) has one
caption per line, the image name and caption number before a tab:

```
1000268201_693b08cb0e.jpg#0<TAB>A child in a pink dress is climbing up a set of stairs in an entry way .
```

The split lists `Flickr_8k.trainImages.txt`, `Flickr_8k.devImages.txt` (read as
"val") and `Flickr_8k.testImages.txt`, one image name a line, are used when they
lie beside the token file. When any of them is there, the lists present define
the splits completely: an image in none of them is left out of the data set (it
goes to `CaptionDataset.excluded`, never to a random split), because the
official splits are what results on Flickr8k are compared by. Without split
lists every image has split `None` and kcap's random split applies. Names in a
list that the token file has no captions for are ignored (the original
Flickr8k lists name an image the token file spells `2258277193_586949ec62.jpg.1`).
"""

from __future__ import annotations

from pathlib import Path

from kcap.data.dataset import CaptionDataset, CaptionedImage
from kcap.data.formats.common import (
    CaptionFileError, DataProblem, caption_fault, find_images_dir, read_text, record, resolve_image,
    same_image_name, text_lines,
)

# Official list file → kcap split, in the order they are read.
SPLIT_LISTS = (
    ("Flickr_8k.trainImages.txt", "train"),
    ("Flickr_8k.devImages.txt", "val"),
    ("Flickr_8k.testImages.txt", "test"),
)


def parse_token_line(line: str) -> tuple[str, str, str] | str:
    """Splits `NAME#N<TAB>caption` into `(name, N, caption)`, or returns why it cannot.

    Example: `parse_token_line("a.jpg#0\\tA dog .")` → `("a.jpg", "0", "A dog .")`.
    """
    key, tab, caption = line.partition("\t")
    if not tab:
        return "expected NAME#N<TAB>caption, found no tab"
    name, hash_sign, number = key.strip().rpartition("#")
    if not hash_sign or not number.isdigit():
        return f"expected NAME#N before the tab (N a caption number), found {key.strip()!r}"
    if not name.strip():
        return "the image name before '#' is empty"
    fault = caption_fault(caption)
    if fault:
        return f"the caption of {name.strip()!r} {fault}"
    return name.strip(), number, caption.strip()


def read_split_lists(folder: Path, errors: list[DataProblem] | None = None) -> dict[str, str] | None:
    """Image name → split from the official lists in `folder`, or `None` when there are none.

    A name in two lists is an error (with an `errors` list, recorded there; the name keeps its
    first split); a name twice in one list is a warning there.
    """
    found = [(folder / file, split) for file, split in SPLIT_LISTS if (folder / file).is_file()]
    if not found:
        return None
    splits: dict[str, str] = {}
    where: dict[str, tuple[Path, int]] = {}
    for list_file, split in found:
        for number, line in enumerate(text_lines(read_text(list_file, errors)), start=1):
            name = line.strip()
            if not name:
                continue
            name = same_image_name(name)  # as the token file's names are: "./a.jpg" lists a.jpg
            if name in splits and splits[name] == split:
                # Listed twice in one list: the split is the same, so nothing is ambiguous.
                if errors is not None:
                    errors.append(DataProblem(
                        str(list_file), number, f"{name!r} is already listed at line {where[name][1]}.", "warning"
                    ))
                continue
            if name in splits:
                record(errors, CaptionFileError(
                    f"{list_file}:{number}: {name!r} is already listed in {where[name][0]}:{where[name][1]}; "
                    f"an image can be in one split only."
                ), list_file, number)
                continue
            splits[name], where[name] = split, (list_file, number)
    return splits


def read_flickr8k_captions(
    path: str | Path, images_dir: str | Path | None = None, errors: list[DataProblem] | None = None
) -> CaptionDataset:
    """Reads a Flickr8k-style token file and, when present beside it, the official split lists.

    With an `errors` list, each bad line is recorded there (file, line, reason)
    and skipped instead of raising; a caption repeating an earlier caption of
    the same image word for word is recorded as a warning and kept.

    Example:

    ```python
    dataset = read_flickr8k_captions("Flickr8k_text/Flickr8k.token.txt", "Flicker8k_Dataset")
    dataset.split_sizes()  # {'train': 6000, 'val': 1000, 'test': 1000}
    ```
    """
    path = Path(path)
    images_root = find_images_dir(path, images_dir)
    by_name: dict[str, CaptionedImage] = {}
    numbered: dict[tuple[str, str], int] = {}
    texts: dict[tuple[str, str], int] = {}
    not_token_lines: list[str] = []
    lines = text_lines(read_text(path, errors))
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            name, caption = _add_line(line, line_number, path, images_root, by_name, numbered)
        except CaptionFileError as error:
            if isinstance(error, _NotATokenLine) and not by_name:
                not_token_lines.append(line)
                if len(not_token_lines) == _NOT_A_TOKEN_FILE:
                    # Another format read as a token file would give one error per line, by the thousand.
                    raise CaptionFileError(
                        f"{path}: not a Flickr8k token file: none of its first {_NOT_A_TOKEN_FILE} caption lines is "
                        f"NAME#N<TAB>caption (the first is {not_token_lines[0][:80]!r}). "
                        f"Check --format (auto tells the formats apart)."
                    ) from None
            record(errors, error, path, line_number)
            continue
        if errors is not None:
            previous = texts.setdefault((name, caption), line_number)
            if previous != line_number:
                errors.append(DataProblem(
                    str(path), line_number, f"repeats the caption of {name!r} at line {previous} word for word.", "warning"
                ))
    if not by_name and not errors:
        raise CaptionFileError(f"{path}: no caption lines; expected NAME#N<TAB>caption lines.")

    splits = read_split_lists(path.parent, errors)
    if splits is None:
        return CaptionDataset(list(by_name.values()), images_root, source=str(path))
    kept, excluded = [], []
    for name, image in by_name.items():
        image.split = splits.get(name)
        (kept if image.split is not None else excluded).append(image)
    return CaptionDataset(kept, images_root, source=str(path), excluded=excluded)


# This many lines without NAME#N<TAB> before a good one: the file is not a token file at all.
_NOT_A_TOKEN_FILE = 10


class _NotATokenLine(CaptionFileError):
    """A line that is not NAME#N<TAB>caption at all (rather than a token line with a bad path or caption)."""


def _add_line(line: str, line_number: int, path: Path, images_root: Path, by_name: dict, numbered: dict) -> tuple[str, str]:
    """Adds one token line to `by_name` and returns (image name, caption), or raises a `CaptionFileError`."""
    parsed = parse_token_line(line)
    if isinstance(parsed, str):
        not_a_token_line = parsed.startswith("expected NAME#N")
        raise (_NotATokenLine if not_a_token_line else CaptionFileError)(f"{path}:{line_number}: {parsed}.")
    name, number, caption = parsed
    name = same_image_name(name, images_root)
    previous = numbered.get((name, number))
    if previous is not None:
        raise CaptionFileError(
            f"{path}:{line_number}: caption #{number} of {name!r} was already given at line {previous}."
        )
    image = by_name.get(name)
    if image is None:
        image = by_name[name] = CaptionedImage(resolve_image(images_root, name, f"{path}:{line_number}"), [])
    numbered[(name, number)] = line_number
    image.captions.append(caption)
    return name, caption
