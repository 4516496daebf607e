"""Reading caption files into a `CaptionDataset`, whatever their format.

Formats (`caption_formats()`; `--format` on the command line):

- `csv`: a header `image,caption`, optionally a `split` column (Kaggle's Flickr8k `captions.txt`).
- `flickr8k`: `NAME.jpg#N<TAB>caption` lines (`Flickr8k.token.txt`, Flickr30k's
  `results_20130124.token`), with the official `Flickr_8k.{train,dev,test}Images.txt`
  split lists beside it when present; images in none of those lists are left out.
- `coco`: COCO captions JSON (`images` and `annotations`); no split, the random split applies.
- `karpathy`: Karpathy's split JSON (`dataset_coco.json`, ...); its splits are kept.
- `auto` (the default): a `.json` file is COCO or Karpathy by its keys, a file whose
  first line is `NAME#N<TAB>...` is a token file, anything else is CSV.

A new format is one reader module under `kcap.data.formats` and one `register_format`
line below (`docs/architecture.md` has the recipe).

The path may be the caption file or a folder holding one (see `find_caption_file`).
Images are in `Images/` or `images/` beside the caption file unless `images_dir`
names the folder; an image path that leads outside that folder is refused. Each
format's details are in its module under `kcap.data.formats`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path

from kcap.data.dataset import CaptionDataset
from kcap.data.formats.coco import coco_dataset, read_coco_captions
from kcap.data.formats.common import CaptionFileError, DataProblem, find_images_dir, load_json, resolve_image
from kcap.data.formats.csv_captions import read_csv_captions
from kcap.data.formats.flickr8k import SPLIT_LISTS, read_flickr8k_captions
from kcap.data.formats.karpathy import karpathy_dataset, read_karpathy_captions

__all__ = [
    "CaptionFileError",
    "CaptionFormat",
    "DataProblem",
    "detect_format",
    "find_caption_file",
    "find_images_dir",
    "read_captions",
    "read_csv_captions",
    "register_format",
    "caption_formats",
    "resolve_image",
]


@dataclasses.dataclass(frozen=True)
class CaptionFormat:
    """A caption file format: its name, its reader and the files it looks for in a folder.

    `read(path, images_dir, errors)` returns a `CaptionDataset`; with an
    `errors` list it records each bad row there as a `DataProblem` and goes on
    (see `read_captions`). `folder_patterns` are the glob patterns tried, in
    order, when `--data` names a folder.
    """

    name: str
    read: Callable[[Path, str | Path | None, list[DataProblem] | None], CaptionDataset]
    folder_patterns: tuple[str, ...] = ()


_REGISTRY: dict[str, CaptionFormat] = {}


def register_format(caption_format: CaptionFormat) -> CaptionFormat:
    """Makes a format readable by `read_captions` and `--format NAME`.

    Example:

    ```python
    register_format(CaptionFormat("tsv", read_tsv_captions, ("captions.tsv",)))
    dataset = read_captions("data/captions.tsv", format="tsv")
    ```
    """
    name = caption_format.name
    if name == "auto" or not name.isidentifier():
        raise ValueError(f"A caption format needs a name that is an identifier other than 'auto', got {name!r}.")
    if name in _REGISTRY:
        raise ValueError(f"The caption format {name!r} is registered already.")
    _REGISTRY[name] = caption_format
    return caption_format


def caption_formats() -> tuple[str, ...]:
    """The names `--format` takes: `auto`, then every registered format.

    >>> caption_formats()[:5]
    ('auto', 'csv', 'flickr8k', 'coco', 'karpathy')
    """
    return ("auto", *_REGISTRY)


register_format(CaptionFormat("csv", read_csv_captions, ("captions.csv", "captions.txt")))
register_format(CaptionFormat("flickr8k", read_flickr8k_captions, ("Flickr8k.token.txt", "*.token.txt", "*.token")))
register_format(CaptionFormat("coco", read_coco_captions, ("*.json",)))
register_format(CaptionFormat("karpathy", read_karpathy_captions, ("*.json",)))

def _folder_patterns(format: str) -> tuple[str, ...]:
    """What a folder is searched for, in this order; the first pattern that matches exactly one file wins."""
    if format != "auto":
        return _REGISTRY[format].folder_patterns
    builtin = ("captions.csv", "captions.txt", "Flickr8k.token.txt", "*.token.txt", "*.token", "*.json")
    return builtin + tuple(
        pattern for f in _REGISTRY.values() for pattern in f.folder_patterns if pattern not in builtin
    )


def _check_format(format: str) -> None:
    if format not in _REGISTRY and format != "auto":
        raise ValueError(f"Unknown caption format {format!r}; expected one of {caption_formats()}.")


# The start of a token-file line: NAME#N, then whitespace (a name may hold spaces, not commas or tabs).
_TOKEN_START = re.compile(r"^[^\t,]*[^\s,]#\d+\s")


def find_caption_file(folder: str | Path, format: str = "auto") -> Path:
    """The caption file inside `folder` for `format`.

    Looks for `captions.csv`, `captions.txt` (csv), `Flickr8k.token.txt`,
    `*.token.txt`, `*.token` (flickr8k) and a single `*.json` (coco, karpathy);
    `auto` tries them all in that order, except that a token file comes first
    when Flickr8k's official split lists lie beside it (Kaggle's Flickr8k folder
    holds both `captions.txt` and the token file; only the latter has the splits
    results are compared by).

    Example: `find_caption_file("flickr8k")` → `flickr8k/captions.txt`.
    """
    _check_format(format)
    folder = Path(folder)
    patterns = _folder_patterns(format)
    if format == "auto" and any((folder / name).is_file() for name, _ in SPLIT_LISTS):
        token_files = _folder_patterns("flickr8k")
        patterns = token_files + tuple(p for p in patterns if p not in token_files)
    for pattern in patterns:
        matches = sorted(p for p in folder.glob(pattern) if p.is_file())
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            names = ", ".join(p.name for p in matches)
            raise FileNotFoundError(
                f"Several caption files match {pattern} in {folder} ({names}); pass the one to read."
            )
    raise FileNotFoundError(f"No caption file in {folder}: looked for {', '.join(patterns)}.")


def detect_format(path: str | Path) -> str:
    """The format of caption file `path`: "csv", "flickr8k", "coco" or "karpathy".

    Example: `detect_format("Flickr8k_text/Flickr8k.token.txt")` → `"flickr8k"`.
    """
    path = Path(path)
    if _is_json(path):
        return _json_format(load_json(path), path)
    return _text_format(path)


def read_captions(
    path: str | Path,
    images_dir: str | Path | None = None,
    format: str = "auto",
    errors: list[DataProblem] | None = None,
) -> CaptionDataset:
    """Reads a caption file, or the caption file inside a folder, in any supported format.

    By default the first bad row raises a `CaptionFileError`. With an `errors`
    list, every bad row or entry is recorded there as a `DataProblem` (file,
    line, reason) and left out, so one pass reports them all (`kcap data check`);
    problems that leave nothing readable (no file, no header, JSON that does
    not parse) still raise.

    Example:

    ```python
    dataset = read_captions("Flickr8k_text", images_dir="Flicker8k_Dataset")  # finds Flickr8k.token.txt
    dataset.split_sizes()  # the official splits: {'train': 6000, 'val': 1000, 'test': 1000}
    problems = []
    dataset = read_captions("captions.csv", errors=problems)  # the good rows; problems lists the rest
    ```
    """
    _check_format(format)
    path = Path(path)
    if path.is_dir():
        path = find_caption_file(path, format)
    elif not path.is_file():
        raise FileNotFoundError(f"Caption file {path} does not exist.")
    if format == "auto":
        if _is_json(path):
            # Parsed once: COCO training files are tens of megabytes.
            images_root = find_images_dir(path, images_dir)
            data = load_json(path)
            build = coco_dataset if _json_format(data, path) == "coco" else karpathy_dataset
            return build(data, path, images_root, errors)
        format = _text_format(path)
    return _REGISTRY[format].read(path, images_dir, errors)


def _is_json(path: Path) -> bool:
    if path.suffix.lower() == ".json":
        return True
    with path.open("rb") as file:
        return file.read(1024).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{")


def _json_format(data: object, path: Path) -> str:
    if isinstance(data, dict):
        if "annotations" in data:
            return "coco"
        entries = data.get("images")
        if isinstance(entries, list) and entries and isinstance(entries[0], dict):
            if "sentences" in entries[0] or "filename" in entries[0]:
                return "karpathy"
            if "file_name" in entries[0]:
                return "coco"  # the COCO reader then says what is missing
        found = f"top-level keys {sorted(data)[:10]}"
    else:
        found = "a JSON " + type(data).__name__
    raise CaptionFileError(
        f"{path}: cannot tell which caption format this JSON is: expected COCO captions "
        f"(top-level 'images' and 'annotations') or a Karpathy split file ('images' entries "
        f"with 'filename', 'split' and 'sentences'); found {found}. Pass --format to choose."
    )


def _text_format(path: Path) -> str:
    with path.open("rb") as file:
        # Only a peek; the reader reports undecodable text with its line.
        head = file.read(64 * 1024).decode("utf-8-sig", errors="replace")
    first = next((line for line in head.split("\n") if line.strip()), "")
    # Loose on purpose (a space instead of the tab still counts), so that a broken
    # token file gets the token reader's precise error, not a CSV header complaint.
    return "flickr8k" if _TOKEN_START.match(first) else "csv"
