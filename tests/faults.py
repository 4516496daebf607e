"""Faults made for real, for the reliability tests: image files of every kind, good and bad, a kill
at a chosen moment, a small disk. Nothing here is stored; every test makes what it needs."""

import contextlib
import json
import os
import signal
import struct
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from conftest import TINY, kcap_command


ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


# Trains on the files of a caption CSV in seconds: a random small_cnn at 64 px.
CSV_FLAGS = [
    "--backbone", "small_cnn", "--image-size", "64", "--epochs", "1", "--batch-size", "16",
    "--embedding-dim", "16", "--units", "32", "--learning-rate", "0.003", "--dropout", "0",
]


# Without per-epoch captioning of the validation images, a third of a tiny run's time: the tests
# that kill a run anywhere and that skip bad images keep it, test_validation_captioning.py tests it.
SYNTHETIC_FLAGS = [
    "--data", "synthetic", "--synthetic-images", str(TINY["synthetic_images"]),
    "--synthetic-image-size", str(TINY["synthetic_image_size"]), "--batch-size", str(TINY["batch_size"]),
    "--embedding-dim", str(TINY["embedding_dim"]), "--units", str(TINY["units"]),
    "--learning-rate", str(TINY["learning_rate"]), "--dropout", "0", "--val-captions", "0", "--verbose", "2",
]


def run_kcap(*args, timeout=600):
    return subprocess.run(kcap_command(*args), env=ENV, capture_output=True, text=True, timeout=timeout)


def smooth_picture(height=48, width=64, seed=0):
    """A smooth picture (compresses like a photo, not like noise)."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    g = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    b = np.full_like(r, (seed * 37) % 256)
    return np.stack([r, g, b], axis=-1)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _huge_png_header(path: Path, width=20000, height=20000):
    """A valid PNG header announcing 400 million pixels, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + _png_chunk(b"IEND", b"")
    )


def write_handled_images(folder: Path) -> dict[str, str]:
    """Images that are unusual but fine: name → what is unusual. kcap must decode each one."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(smooth_picture())
    rgb.convert("L").save(folder / "gray.jpg")
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "palette.png", transparency=0)
    Image.fromarray((smooth_picture()[..., 0].astype(np.uint16) * 257)).save(folder / "gray16.png")  # mode I;16
    (folder / "rgb16.png").write_bytes(tf.io.encode_png(tf.constant(smooth_picture().astype(np.uint16) * 257)).numpy())
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.new("RGB", (1, 1), (200, 30, 40)).save(folder / "one_pixel.png")
    Image.fromarray(smooth_picture(6000, 8000)).save(folder / "large.jpg", quality=40)
    rgb.save(folder / "progressive.jpg", progressive=True)
    rgb.save(folder / "image.gif")
    rgb.save(folder / "image.bmp")
    rgb.save(folder / "image.webp")
    rgb.save(folder / "png_named.jpg", format="PNG")  # the content decides, not the name
    return {
        "gray.jpg": "grayscale JPEG", "gray.png": "grayscale PNG", "rgba.png": "RGBA PNG",
        "palette.png": "palette PNG with transparency", "gray16.png": "16-bit grayscale PNG",
        "rgb16.png": "16-bit RGB PNG", "cmyk.jpg": "CMYK JPEG", "one_pixel.png": "1x1 image",
        "large.jpg": "8000x6000 JPEG", "progressive.jpg": "progressive JPEG", "image.gif": "GIF",
        "image.bmp": "BMP", "image.webp": "WebP", "png_named.jpg": "PNG named .jpg",
    }


def write_bad_images(folder: Path) -> dict[str, str]:
    """Images kcap cannot train on: name → the start of the reason the check gives."""
    folder.mkdir(parents=True, exist_ok=True)
    rgb = Image.fromarray(smooth_picture())
    (folder / "zero.jpg").write_bytes(b"")
    rgb.save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    rgb.save(folder / "whole.png")
    data = (folder / "whole.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) * 2 // 3])
    (folder / "whole.png").unlink()
    (folder / "text.jpg").write_text("<html>404 Not Found</html>\n")
    rgb.save(folder / "image.tif")
    _huge_png_header(folder / "huge.png")
    # missing.jpg: named by the caption file, never written.
    return {
        "missing.jpg": "image file is missing",
        "zero.jpg": "zero-byte file",
        "truncated.jpg": "truncated",
        "truncated.png": "truncated",
        "text.jpg": "not an image",
        "image.tif": "unsupported image format TIFF",
        "huge.png": "image too large to decode safely",
    }


# Caption rows with problems, appended to a good CSV: (row bytes, the reason the check gives).
BAD_ROWS = [
    (b"00001.png,\n", "the caption of '00001.png' is empty"),
    (b",a red circle\n", "the image field is empty"),
    (b"00002.png,a red circle,on the left\n", "expected 2 fields, found 3"),
    (b"../outside.png,a red circle\n", "image path '../outside.png' resolves outside"),
    (b"00003.png,a caf\xe9 circle\n", "text is not UTF-8"),
    (b"00004.png,a red circle,\n", "expected 2 fields, found 3"),
]


def kill_when(process, condition, timeout=300, interval=0.003):
    """SIGKILLs `process` as soon as `condition()` holds; returns what `condition` returned."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        seen = condition()
        if seen:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return seen
        time.sleep(interval)
    return None


def completed_epochs(run: Path) -> int:
    try:
        return json.loads((run / "checkpoints" / "resume.json").read_text())["completed_epochs"]
    except FileNotFoundError:
        return 0


def assert_no_half_written_file(run: Path):
    """Every file a run keeps opens: JSON parses, the Keras models load with their vocabulary."""
    from kcap.inference import load_run

    for path in run.rglob("*.json"):
        if not path.name.startswith("."):
            json.loads(path.read_text())
    for checkpoint, path in (("best", run / "checkpoints" / "best.keras"), ("last", run / "model.keras")):
        if path.exists():
            assert load_run(run, checkpoint).model is not None


@contextlib.contextmanager
def tmpfs(path: Path, options: str):
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'mount failed'}); needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
