"""The embedded data set: coloured shapes with template captions.

Generated from a seed, nothing downloaded and nothing stored in the repo.
Each image holds one to three objects (colour x shape x size) on a noisy,
varied background; each has five captions from varied templates that name
the objects in reading order and, for several objects, how they are placed.
Because captions speak of left/right and above/below, augmentations that
mirror the image are not allowed on this set.

Example:

```python
from kcap.data.synthetic import write_synthetic_dataset
write_synthetic_dataset("shapes", num_images=200, seed=0)  # shapes/images, shapes/captions.csv
```
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from kcap.utils.files import atomic_directory

log = logging.getLogger("kcap")

COLORS = {
    "red": (215, 35, 35),
    "green": (35, 165, 55),
    "blue": (40, 75, 220),
    "yellow": (235, 210, 30),
}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.075, "large": 0.14}  # radius as a fraction of the image side
SIZE_WORDS = {"small": (("small", 0.6), ("little", 0.4)), "large": (("large", 0.6), ("big", 0.4))}
RELATIONS = {  # layout -> (word for first-then-second, word for second-then-first)
    "horizontal": ("left of", "right of"),
    "vertical": ("above", "below"),
}
ORDER_WORDS = {"horizontal": "from left to right", "vertical": "from top to bottom"}
NUM_OBJECTS_P = (0.3, 0.4, 0.3)

SYNTHETIC_VERSION = 1


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    color: str
    shape: str
    size: str


def _choice(rng: np.random.Generator, options):
    words, weights = zip(*options)
    return words[rng.choice(len(words), p=np.asarray(weights) / sum(weights))]


def _phrase(obj: ShapeObject, rng: np.random.Generator) -> str:
    return f"a {_choice(rng, SIZE_WORDS[obj.size])} {obj.color} {obj.shape}"


def describe(objects: list[ShapeObject], layout: str, rng: np.random.Generator) -> str:
    """One caption for objects listed in reading order (left→right or top→bottom)."""
    a = [_phrase(obj, rng) for obj in objects]
    if len(objects) == 1:
        (obj,) = objects
        size = _choice(rng, SIZE_WORDS[obj.size])
        return _choice(rng, [
            (f"{a[0]}", 0.45),
            (f"there is {a[0]}", 0.2),
            (f"a picture of {a[0]}", 0.2),
            (f"one {size} {obj.color} {obj.shape}", 0.15),
        ])
    forward, backward = RELATIONS[layout]
    if len(objects) == 2:
        return _choice(rng, [
            (f"{a[0]} {forward} {a[1]}", 0.45),
            (f"there is {a[1]} {backward} {a[0]}", 0.2),
            (f"{a[1]} {backward} {a[0]}", 0.2),
            (f"two shapes {a[0]} {forward} {a[1]}", 0.15),
        ])
    order = ORDER_WORDS[layout]
    return _choice(rng, [
        (f"{a[0]} , {a[1]} and {a[2]} {order}", 0.45),
        (f"{a[0]} {forward} {a[1]} {forward} {a[2]}", 0.25),
        (f"three shapes {a[0]} , {a[1]} and {a[2]}", 0.3),
    ])


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    base = rng.uniform(90, 200) + rng.uniform(-25, 25, size=3)  # greyish, tinted
    gradient = rng.uniform(-30, 30, size=3)
    direction = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1) - 0.5
    ramp = np.cos(direction) * xx + np.sin(direction) * yy
    image = base + ramp[..., None] * gradient
    image = image + rng.normal(0, rng.uniform(4, 12), size=(size, size, 3))
    return image


def _draw(draw: ImageDraw.ImageDraw, obj: ShapeObject, cx: float, cy: float, r: float, fill):
    if obj.shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif obj.shape == "square":
        s = r * 0.9
        draw.rectangle([cx - s, cy - s, cx + s, cy + s], fill=fill)
    else:
        draw.polygon([(cx, cy - r), (cx - r * 1.05, cy + r * 0.8), (cx + r * 1.05, cy + r * 0.8)], fill=fill)


def make_example(index: int, seed: int, image_size: int = 96, captions_per_image: int = 5):
    """Image (uint8 HxWx3), its objects in reading order, the layout and captions."""
    rng = np.random.default_rng([seed, index])
    num_objects = int(rng.choice(3, p=NUM_OBJECTS_P)) + 1
    objects: list[ShapeObject] = []
    while len(objects) < num_objects:
        obj = ShapeObject(
            color=str(rng.choice(list(COLORS))),
            shape=str(rng.choice(SHAPES)),
            size=str(rng.choice(list(SIZES))),
        )
        if obj not in objects:  # identical twins would make "which is left" ambiguous
            objects.append(obj)
    layout = str(rng.choice(list(RELATIONS)))

    s = float(image_size)
    slots = np.linspace(0.18, 0.82, num_objects) if num_objects > 1 else [0.5]
    pixels = _background(rng, image_size)
    canvas = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj, slot in zip(objects, slots):
        r = SIZES[obj.size] * s * rng.uniform(0.9, 1.1)
        if num_objects == 1:
            along = rng.uniform(0.3, 0.7)
        else:
            along = slot + rng.uniform(-0.02, 0.02)
        across = rng.uniform(0.25, 0.75)
        cx, cy = (along, across) if layout == "horizontal" else (across, along)
        fill = tuple(int(np.clip(c + rng.integers(-18, 19), 0, 255)) for c in COLORS[obj.color])
        _draw(draw, obj, cx * s, cy * s, r, fill)
    image = np.asarray(canvas, dtype=np.float32)
    image = image + rng.normal(0, 3, size=image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    captions = [describe(objects, layout, rng) for _ in range(captions_per_image)]
    return image, objects, layout, captions


def write_synthetic_dataset(
    output: str | Path,
    num_images: int = 3000,
    seed: int = 0,
    image_size: int = 96,
    captions_per_image: int = 5,
    force: bool = False,
) -> Path:
    """Writes `images/NNNNN.png` and `captions.csv` (`image,caption`) to `output`.

    The same arguments always give byte-identical files, so an earlier set
    written with them is kept as it is (written again when files are missing,
    or with `force`). An earlier set of other settings is replaced only with
    `force` (runs trained on it read its images). The folder appears whole or
    not at all. Returns the path of `captions.csv`.
    """
    output = Path(output)
    if not 64 <= image_size <= 512:
        raise ValueError(f"image_size must be between 64 and 512, got {image_size}.")
    if num_images < 1 or seed < 0:
        raise ValueError(f"num_images must be at least 1 and seed at least 0, got {num_images} and {seed}.")
    params = _params(num_images, seed, image_size, captions_per_image)
    # The new set replaces the folder whole: only an empty one or an earlier set may go.
    if output.exists() and not _replaceable(output):
        raise FileExistsError(
            f"{output} exists and is not an earlier synthetic set (no synthetic.json); writing the set "
            "there would delete what it holds. Give a new or empty folder as --output."
        )
    marker = output / "synthetic.json"
    if marker.is_file() and not force:
        recorded = _recorded(marker)
        if recorded is None:
            raise FileExistsError(
                f"{marker} cannot be read, so which set {output} holds is unknown, and runs trained on it read "
                "its images. Give another --output, or --force to write the set there again."
            )
        earlier = _settings(recorded)
        if earlier == params and _complete(output, num_images, recorded):
            log.info("%s already holds this synthetic set; kept as it is.", output)
            return output / "captions.csv"
        if earlier != params:
            changed = ", ".join(f"{k} {earlier.get(k)} → {v}" for k, v in params.items() if earlier.get(k) != v)
            raise FileExistsError(
                f"{output} holds a synthetic set of other settings ({changed}), and runs trained on it read "
                "its images. Give another --output, or --force to replace it."
            )
    with atomic_directory(output) as tmp:
        (tmp / "images").mkdir()
        with open(tmp / "captions.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption"])
            for index in range(num_images):
                image, _, _, captions = make_example(index, seed, image_size, captions_per_image)
                name = f"{index:05d}.png"
                Image.fromarray(image).save(tmp / "images" / name, optimize=False)
                for caption in captions:
                    writer.writerow([name, caption])
        # The captions' digest finds a damaged caption file when the set is next asked for.
        digest = _sha256(tmp / "captions.csv")
        (tmp / "synthetic.json").write_text(json.dumps({**params, "captions_sha256": digest}))
    return output / "captions.csv"


def _recorded(marker: Path) -> dict | None:
    """What an earlier set's `synthetic.json` records; `None` if it is missing or cannot be read."""
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _settings(recorded: dict) -> dict:
    """The settings among what `synthetic.json` records, to compare with `_params`."""
    return {k: v for k, v in recorded.items() if k != "captions_sha256"}


def _complete(folder: Path, num_images: int, recorded: dict) -> bool:
    """Whether an earlier set's files are all there and its captions intact (else it is written again).

    Images are checked for being there only: the data check decodes them, and
    training on the cached set writes it again when one is damaged.
    """
    digest = recorded.get("captions_sha256")
    try:
        intact = digest is not None and _sha256(folder / "captions.csv") == digest
    except OSError:
        return False
    images = folder / "images"
    return intact and all((images / f"{index:05d}.png").is_file() for index in range(num_images))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _replaceable(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    return not any(folder.iterdir()) or (folder / "synthetic.json").is_file()


def _params(num_images, seed, image_size, captions_per_image) -> dict:
    return {
        "version": SYNTHETIC_VERSION,
        "num_images": num_images,
        "seed": seed,
        "image_size": image_size,
        "captions_per_image": captions_per_image,
    }


def cached_synthetic_dataset(
    num_images: int = 3000, seed: int = 0, image_size: int = 96, captions_per_image: int = 5, force: bool = False
) -> Path:
    """The synthetic set under kcap's cache folder, generated on first use.

    The cache folder is `$KCAP_CACHE_DIR`, else `~/.cache/kcap`. A cached set that
    lost files, or whose caption file or `synthetic.json` changed, is written
    again; so is one found damaged, with `force`.
    """
    params = _params(num_images, seed, image_size, captions_per_image)
    key = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "datasets" / f"synthetic-{key}"
    recorded = _recorded(folder / "synthetic.json")
    intact = recorded is not None and _settings(recorded) == params and _complete(folder, num_images, recorded)
    if force or not intact:
        write_synthetic_dataset(folder, num_images, seed, image_size, captions_per_image, force=True)
    return folder / "captions.csv"


def cache_dir() -> Path:
    return Path(os.environ.get("KCAP_CACHE_DIR") or Path.home() / ".cache" / "kcap")
