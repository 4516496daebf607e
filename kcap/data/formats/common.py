"""What every caption-format reader shares: the error type, text and JSON loading, image paths."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from kcap.text.tokenize import tokenize

# The image files kcap reads: what `tf.io.decode_image` decodes.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")

# Split names found in caption files, mapped onto kcap's splits. Karpathy's
# "restval" (COCO val2014 images outside his val/test) is training data.
SPLIT_ALIASES = {"train": "train", "val": "val", "test": "test", "restval": "train"}


class CaptionFileError(ValueError):
    """A caption file that cannot be read; the message names the file, line or entry, and why.

    Example: `captions.csv:3: the caption of 'a.jpg' is empty.`
    """


@dataclasses.dataclass(frozen=True)
class DataProblem:
    """One problem of a data set: the file, the line (when there is one) and why.

    Readers given an `errors` list record one of these per bad row or entry and
    skip it, instead of raising at the first one. `severity` is `"error"` (the
    row or image is left out) or `"warning"` (kept, but worth a look).

    Example: `DataProblem("captions.csv", 3, "the caption of 'a.jpg' is empty.")`
    prints as `captions.csv:3: the caption of 'a.jpg' is empty.`
    """

    file: str
    line: int | None
    reason: str
    severity: str = "error"

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}" if self.line else f"{self.file}: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_error(cls, error: CaptionFileError, file: Path, line: int | None = None) -> "DataProblem":
        """The problem a reader's `CaptionFileError` describes, its `file:line: ` prefix split off."""
        message = str(error)
        for prefix in (f"{file}:{line}: ", f"{file}: "):
            if message.startswith(prefix):
                message = message[len(prefix):]
                break
        return cls(str(file), line, message)


def record(errors: list[DataProblem] | None, error: CaptionFileError, file: Path, line: int | None = None) -> None:
    """Re-raises `error` in the default (strict) mode; appends it to `errors` in collecting mode."""
    if errors is None:
        raise error
    errors.append(DataProblem.from_error(error, file, line))


def find_images_dir(caption_file: Path, images_dir: str | Path | None = None) -> Path:
    """`images_dir` if given, else `Images/` or `images/` beside the caption file.

    Example: `find_images_dir(Path("flickr8k/captions.txt"))` → `flickr8k/Images`.
    """
    if images_dir is not None:
        path = Path(images_dir)
        if path.is_file():
            raise NotADirectoryError(f"Images folder {path} is a file; --images takes the folder that holds the images.")
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


def same_image_name(name: str, images_dir: Path | None = None) -> str:
    """One spelling per file, so that captions group by image: `./a.jpg` and `b/../a.jpg` → `a.jpg`.

    An absolute path inside `images_dir` becomes the path below it: `/data/Images/a.jpg`
    → `a.jpg` for `images_dir` `/data/Images`. Two spellings of one image would make
    two images, which could land in different splits and leak test captions into training.
    """
    name = os.path.normpath(name)
    if images_dir is not None and os.path.isabs(name):
        root = os.path.abspath(images_dir)
        if os.path.commonpath([root, name]) == root and name != root:
            return Path(os.path.relpath(name, root)).as_posix()
    return name


def resolve_image(images_dir: Path, name: str, where: str) -> Path:
    """Joins `name` to `images_dir`, refusing names that escape the folder.

    `where` ("captions.csv:3", "data.json: images[7]") starts the error message.
    Example: `resolve_image(Path("Images"), "a.jpg", "captions.csv:2")` → `Images/a.jpg`.
    """
    if "\x00" in name:  # no file name holds one; Path.resolve would raise a bare ValueError
        raise CaptionFileError(f"{where}: image path {name!r} contains a NUL character.")
    # Judged by the name, not by where a symbolic link leads: a folder of links into
    # another one is a common way to lay out a data set without copying it.
    root = Path(os.path.abspath(images_dir))
    path = Path(os.path.abspath(images_dir / name))
    if root != path and root not in path.parents:
        raise CaptionFileError(f"{where}: image path {name!r} resolves outside {images_dir}.")
    return images_dir / name


def read_text(path: Path, errors: list[DataProblem] | None = None) -> str:
    """The file as text: UTF-8 (a byte-order mark is dropped), else a `CaptionFileError` with the line.

    Lines end in LF or CRLF, or in CR alone when the file has no LF at all.

    With an `errors` list, every line that is not UTF-8 is recorded there and
    read as an empty line (readers skip those), so line numbers stay right.
    """
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):  # Excel's "Unicode text" and Windows tools write these
        raise CaptionFileError(f"{path}: the file is UTF-16 text; save it as UTF-8.")
    if b"\r" in data and b"\n" not in data:
        # Old Mac line ends (Excel for Mac's "CSV (Macintosh)" still writes them): read as one
        # line, a whole file would be one caption. Only then, so that a stray CR inside some
        # line of another file keeps the line numbers after it right.
        data = data.replace(b"\r", b"\n")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        if errors is None:
            raise CaptionFileError(f"{path}:{line}: text is not UTF-8 ({error.reason}).") from None
    lines = []
    for number, raw in enumerate(data.removeprefix(b"\xef\xbb\xbf").split(b"\n"), start=1):
        try:
            lines.append(raw.decode("utf-8"))
        except UnicodeDecodeError as error:
            errors.append(DataProblem(str(path), number, f"text is not UTF-8 ({error.reason})."))
            lines.append("")
    return "\n".join(lines)


def text_lines(text: str) -> list[str]:
    """Lines split on newlines only (`str.splitlines` also splits on form feeds and
    Unicode separators, which would put the reported line numbers off)."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def load_json(path: Path) -> Any:
    """Parses a JSON file, reporting syntax errors with their line and column."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise CaptionFileError(f"{path}:{error.lineno}:{error.colno}: not valid JSON ({error.msg}).") from None


def caption_fault(caption: str) -> str | None:
    """Why `caption` cannot be trained on, as the end of a sentence about it, or `None`.

    A caption of punctuation alone ("...") normalises to no words at all, which would
    teach the model to end a caption right after it starts.

    Example: `caption_fault("?!")` → `"has no words, only punctuation: '?!'"`.
    """
    if not caption.strip():
        return "is empty"
    if not tokenize(caption):
        return f"has no words, only punctuation: {caption.strip()!r}"
    return None


def json_field(entry: Any, key: str, kind: type | tuple[type, ...], where: str, optional: bool = False) -> Any:
    """`entry[key]`, checked to be of `kind` (and a non-blank string where `kind` is `str`).

    `where` names the entry ("data.json: images[3]"). A missing optional key gives `None`.
    """
    if not isinstance(entry, dict):
        raise CaptionFileError(f"{where}: expected a JSON object, found {_json_type(entry)}.")
    if key not in entry:
        if optional:
            return None
        raise CaptionFileError(f"{where}: no {key!r} key.")
    value = entry[key]
    # bool is an int subclass in Python, but `true` is never a valid id.
    if not isinstance(value, kind) or isinstance(value, bool):
        names = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
        raise CaptionFileError(f"{where}: {key!r} must be {names}, found {_json_type(value)}.")
    if isinstance(value, str) and not value.strip() and not optional:
        raise CaptionFileError(f"{where}: {key!r} is empty.")
    return value


def json_list(data: Any, key: str, path: Path) -> list:
    """The top-level list `data[key]` of a JSON caption file."""
    if not isinstance(data, dict):
        raise CaptionFileError(f"{path}: expected a JSON object with an {key!r} list, found {_json_type(data)}.")
    if key not in data:
        raise CaptionFileError(f"{path}: no {key!r} key at the top level (found {sorted(data)[:10]}).")
    value = data[key]
    if not isinstance(value, list):
        raise CaptionFileError(f"{path}: {key!r} must be a list, found {_json_type(value)}.")
    return value


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}
    if type(value) in names:
        return names[type(value)]
    return "a number" if isinstance(value, (int, float)) else type(value).__name__

