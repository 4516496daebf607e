"""The data check: every problem of a data set, found before training spends an hour on it.

`kcap data check --data DATA` runs it on its own; `kcap train`, `kcap features`
and `kcap tune` run it first (through `kcap.data.loading.load_checked_dataset`, which
`kcap.training.assembly.prepare_data` calls).
It reports each problem with its file, line and reason:

- caption rows: a missing field, an empty caption or one of punctuation alone,
  text that is not UTF-8, an unknown split, an image path that escapes the
  images folder, ... (whatever the caption-file readers refuse; they record
  each one and go on);
- images: missing, zero bytes, not an image, a format kcap's decoder
  (`tf.io.decode_image`) cannot read (TIFF, ...), truncated, undecodable, or
  too large to decode safely;
- warnings, which never stop a run: a row repeated word for word, a very large
  or a tiny image.

What the check accepts, TensorFlow decodes: kcap trains on `tf.io.decode_image`,
so TF is the judge of every image the quick tests below leave in doubt.
Grayscale, palette and RGBA PNGs, 16-bit PNGs (rescaled to 8 bits), CMYK JPEGs,
GIF, BMP and WebP all decode to RGB there.

Images are checked quickly: a header read and `PIL.Image.verify()` (which
checks every PNG chunk's CRC, so a cut PNG is caught), an end-of-image marker
test for JPEGs, and a real TF decode for everything else or anything in doubt
(`full_decode=True`, `--full-decode`, decodes every image).

What a run does with the report is `kcap.data.loading`'s: `--on-bad-image error`
(the default) stops before training with the report (exit code 2);
`--on-bad-image skip` leaves out the bad images and caption rows, logs them, and
the run records them in `config.json` under `data.skipped`. Problems that leave
nothing to read (no caption file, no images folder, no CSV header, JSON that
does not parse) stop every run, whatever the switch.

Example:

```python
from kcap.data.check import check_data

report = check_data("flickr8k/captions.txt")
print(report.format())          # every problem, one a line
report.ok                       # False when any image or row is bad
```
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kcap.data.caption_files import read_captions
from kcap.data.dataset import CaptionDataset
from kcap.data.formats.common import CaptionFileError, DataProblem, read_text, text_lines
from kcap.text.tokenize import is_unsegmented
from kcap.utils import count

# Above this many pixels an image is reported as too large: decoding it takes
# gigabytes (PIL's own decompression-bomb limit, 2 * Image.MAX_IMAGE_PIXELS).
MAX_PIXELS = 178_956_970
# Above this many, a warning: the image is decoded again at every epoch.
LARGE_PIXELS = 40_000_000
# Below this side, a warning: the image is stretched to the backbone's size.
TINY_SIDE = 8

# File signatures of the formats tf.io.decode_image reads (and PIL's names for them).
_TF_FORMATS = "JPEG, PNG, GIF, BMP and WebP"
# Said of the whole file, not of a row: not counted among the bad rows.
NO_USABLE_ROWS = "no usable caption rows: every row has a problem."
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera's multi-picture JPEG; TF decodes its first picture


class DataCheckError(CaptionFileError):
    """The data check found problems and `on_bad_image` is `"error"`; the message lists them all."""


@dataclasses.dataclass
class DataReport:
    """What `check_data` found: the readable data set and every problem.

    `problems` holds caption-file problems (file, line, reason) and image
    problems (the image file, no line), errors and warnings alike.
    """

    source: str
    dataset: CaptionDataset
    problems: list[DataProblem]
    image_paths: list[str]  # every image checked, in order

    @property
    def errors(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[DataProblem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def ok(self) -> bool:
        """True when nothing has to be left out (warnings allowed)."""
        return not self.errors

    @property
    def bad_images(self) -> dict[str, str]:
        """Image path → reason, for every image the check refuses."""
        return {p.file: p.reason for p in self.errors if p.line is None and p.file in self._image_paths}

    @property
    def bad_rows(self) -> list[DataProblem]:
        """Problems of the caption file(s): rows or entries the readers left out."""
        return [
            p for p in self.errors
            if not (p.line is None and p.file in self._image_paths) and p.reason != NO_USABLE_ROWS
        ]

    @property
    def _image_paths(self) -> set[str]:
        return set(self.image_paths)

    def skipped_json(self) -> dict[str, list]:
        """What `--on-bad-image skip` leaves out, as recorded in a run's `config.json`."""
        return {
            "images": [{"path": path, "reason": reason} for path, reason in self.bad_images.items()],
            "rows": [{"file": p.file, "line": p.line, "reason": p.reason} for p in self.bad_rows],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "images": len(self.image_paths),
            "captions": self.dataset.num_captions,
            "images_in_no_split_list": len(self.dataset.excluded),
            "errors": [p.to_json() for p in self.errors],
            "warnings": [p.to_json() for p in self.warnings],
        }

    def summary(self) -> str:
        return (
            f"{self.source}: {count(len(self.image_paths), 'image')}, {count(self.dataset.num_captions, 'caption')}"
            f"{self._excluded()}; "
            f"{count(len(self.bad_images), 'bad image')}, {count(len(self.bad_rows), 'bad caption row')}, "
            f"{count(len(self.warnings), 'warning')}."
        )

    def _excluded(self) -> str:
        if not self.dataset.excluded:
            return ""
        return f" ({count(len(self.dataset.excluded), 'more image')} in no split list, left out)"

    def format(self) -> str:
        """The whole report: a summary line, then every error and every warning, one a line."""
        lines = [self.summary()]
        for title, problems in (("errors", self.errors), ("warnings", self.warnings)):
            if problems:
                lines.append(f"{title}:")
                lines.extend(f"  {problem}" for problem in problems)
        return "\n".join(lines)


def check_data(
    data: str | Path,
    images_dir: str | Path | None = None,
    format: str = "auto",
    full_decode: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> DataReport:
    """Reads a caption file collecting every bad row, then checks every image it names.

    Raises `CaptionFileError` / `FileNotFoundError` only for problems that leave
    nothing to read (see the module docstring); everything else is in the report.

    Example: `check_data("flickr8k", full_decode=True).format()`.
    """
    problems: list[DataProblem] = []
    dataset = read_captions(data, images_dir, format, errors=problems)
    paths = list(dict.fromkeys(str(image.path) for image in dataset.images))
    image_problems = check_images(paths, full_decode=full_decode, progress=progress, workers=workers)
    _add_mentions(image_problems, Path(dataset.source), dataset.images_dir)
    if not dataset.images:
        problems.append(DataProblem(dataset.source, None, NO_USABLE_ROWS))
    problems += _unsegmented_captions(dataset)
    return DataReport(dataset.source, dataset, problems + image_problems, paths)


def _unsegmented_captions(dataset: CaptionDataset) -> list[DataProblem]:
    """One warning for captions in a script written without spaces: each would be one or two 'words'."""
    unsegmented = [c for image in dataset.images for c in image.captions if is_unsegmented(c)]
    if not unsegmented:
        return []
    return [DataProblem(dataset.source, None, (
        f"{len(unsegmented)} of {dataset.num_captions} captions are written without spaces between words "
        f"(e.g. {unsegmented[0]!r}). kcap's words are what spaces separate, so such a caption is one "
        "long word and the model can only repeat whole training captions; split the captions into "
        "words with spaces first (a word segmenter such as jieba for Chinese, fugashi for Japanese)."
    ), "warning")]


def check_images(
    paths: Sequence[str], full_decode: bool = False, progress: bool = True, workers: int | None = None
) -> list[DataProblem]:
    """Checks image files; returns a `DataProblem` (file = the image, no line) per bad or odd one.

    Example: `check_images(["a.jpg", "b.png"])` → `[DataProblem("b.png", None, "zero-byte file.")]`.
    """
    from tqdm.auto import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    found: list[DataProblem] = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool, tqdm(
        total=len(paths), unit="img", desc="checking images", disable=not progress or not paths
    ) as bar:
        # Threads: PIL and TF decode outside the GIL. `map` keeps the order of `paths`.
        for path, (error, warning) in zip(paths, pool.map(lambda p: _check_safely(p, full_decode), paths)):
            if error:
                found.append(DataProblem(path, None, error))
            if warning:
                found.append(DataProblem(path, None, warning, "warning"))
            bar.update(1)
    return found


def image_errors(paths: Sequence[str], full_decode: bool = False, progress: bool = False) -> list[DataProblem]:
    """The problems of `check_images` that keep an image from being used (its warnings left out)."""
    return [problem for problem in check_images(paths, full_decode, progress) if problem.severity == "error"]


def _check_safely(path: str, full_decode: bool) -> tuple[str | None, str | None]:
    try:
        return check_image(path, full_decode)
    except Exception as error:  # one odd file must not stop the check of the others
        return f"cannot be checked ({type(error).__name__}: {error}).", None


def check_image(path: str | Path, full_decode: bool = False) -> tuple[str | None, str | None]:
    """`(error, warning)` for one image file, each `None` or the reason.

    Example: `check_image("tiny.png")` → `(None, "tiny image (1x1 pixels): ...")`.
    """
    from PIL import Image

    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        windows = Path(str(path).replace("\\", "/"))
        if windows != path and windows.is_file():
            # A caption file written on Windows; on Linux a backslash is a character of the name.
            return f"image file is missing; {windows} exists: write the folders of its path with '/', not '\\'.", None
        return "image file is missing.", None
    except OSError as error:
        return f"cannot read the image file ({error.strerror}).", None
    if not path.is_file():
        return "not a regular file.", None
    if size == 0:
        return "zero-byte file.", None
    try:
        with path.open("rb") as file:
            head = file.read(16)
            file.seek(max(0, size - 64))
            tail = file.read()
    except OSError as error:
        return f"cannot read the image file ({error.strerror}).", None

    format, mode, width, height, pil_error = None, None, 0, 0, None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limits below
            with Image.open(path) as image:
                format, mode, (width, height) = image.format, image.mode, image.size
                image.verify()  # PNG: every chunk and CRC; others: the header
    except Image.DecompressionBombError:
        return f"image too large to decode safely (over {MAX_PIXELS // 1_000_000} million pixels).", None
    except Exception as error:  # PIL raises many kinds for bad files; TF decides below
        pil_error = f"{type(error).__name__}: {error}"
    if format and width * height > MAX_PIXELS:
        return f"image too large to decode safely ({width}x{height} pixels).", None

    is_jpeg = head.startswith(b"\xff\xd8\xff")
    # A JPEG that stops before its end-of-image marker is cut short: TF refuses it.
    ends_well = tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")
    doubtful = (
        full_decode or pil_error is not None
        or (is_jpeg and (not ends_well or mode not in ("L", "RGB", "CMYK")))
        or format not in _JPEG_FORMATS + ("PNG",)
    )
    if doubtful:
        tf_error = _tf_decode_error(path)
        if tf_error is not None:
            if format is not None and format not in _JPEG_FORMATS + ("PNG", "GIF", "BMP", "WEBP"):
                return f"unsupported image format {format}: kcap decodes {_TF_FORMATS}; convert it.", None
            if format is None and not _known_signature(head):
                return f"not an image (its content starts {head[:8]!r}).", None
            if (is_jpeg and not ends_well) or "truncated" in (pil_error or "").lower():
                return "truncated: the file ends before its image data does.", None
            return f"cannot be decoded ({tf_error}).", None
    if format == "BMP" and mode == "P":
        # TensorFlow's BMP decoder ignores the colour table: the model would see other colours.
        return (
            "8-bit palette BMP: TensorFlow reads its palette indices as gray levels, not its colours; "
            "convert it to PNG or 24-bit BMP.", None
        )
    if width * height > LARGE_PIXELS:
        return None, (
            f"very large image ({width}x{height} pixels): it is decoded again at every epoch; "
            f"shrink it or use --cache-features."
        )
    if format and min(width, height) < TINY_SIDE:
        return None, f"tiny image ({width}x{height} pixels): it is stretched to the backbone's input size."
    return None, None


def _known_signature(head: bytes) -> bool:
    return (
        head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM"))
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )


def _tf_decode_error(path: Path) -> str | None:
    """None when kcap's own decoder (`kcap.data.images.decode_image`'s op) reads the file, else its error."""
    import tensorflow as tf

    try:
        tf.io.decode_image(path.read_bytes(), channels=3, expand_animations=False, dtype=tf.uint8)
    except (tf.errors.OpError, ValueError) as error:
        message = getattr(error, "message", str(error))
        return message.split("}}")[-1].split("[Op:")[0].strip().rstrip(".")
    return None


def _add_mentions(problems: list[DataProblem], caption_file: Path, images_dir: Path, limit: int = 1000) -> None:
    """Appends "(named at captions.csv:7)" to image problems: the line that names the image.

    Only for files of lines (CSV, token files): a JSON file names its images in
    entries, often all on one line, and the problem's path already names the image.
    """
    if not problems or not caption_file.is_file() or caption_file.suffix.lower() == ".json":
        return
    wanted: dict[str, int] = {}
    for index, problem in enumerate(problems[:limit]):
        try:
            wanted.setdefault(Path(problem.file).relative_to(images_dir).as_posix(), index)
        except ValueError:
            continue
    names = {name: [] for name in wanted}
    try:
        text = read_text(caption_file, errors=[])  # numbered as its reader numbered it
    except CaptionFileError:
        return
    # A whole name, not the end of a longer one: g1.jpg is not named by dog1.jpg.
    patterns = {name: re.compile(rf"(?<![\w.\-/\\]){re.escape(name)}(?![\w.\-])") for name in names}
    for number, line in enumerate(text_lines(text), start=1):
        for name in [n for n in names if not names[n] and n in line and patterns[n].search(line)]:
            names[name].append(number)
        if all(names.values()):
            break
    for index, problem in enumerate(problems[:limit]):
        try:
            name = Path(problem.file).relative_to(images_dir).as_posix()
        except ValueError:
            continue
        if names.get(name):
            reason = f"{problem.reason.rstrip('.')} (named at {caption_file.name}:{names[name][0]})."
            problems[index] = dataclasses.replace(problem, reason=reason)
