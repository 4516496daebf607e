"""Loading `.keras` files, with an error that names a damaged file rather than "File not found"."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras


def load_keras_file(path: str | Path, what_to_do: str = "") -> keras.Model:
    """Loads a `.keras` model file (`compile=False`, `safe_mode=True`).

    Keras says "File not found" for a file that is there but cut short (a copy
    that stopped, a full disk); this checks the archive first and says what is
    wrong with it, followed by `what_to_do`.

    Example: `load_keras_file("run/checkpoints/best.keras", "Use --checkpoint last.")`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist. {what_to_do}".strip())
    problem = _archive_problem(path)
    if problem:
        raise ValueError(f"{path} is not a complete .keras file (truncated or damaged: {problem}). {what_to_do}".strip())
    return keras.models.load_model(path, compile=False, safe_mode=True)


def _archive_problem(path: Path) -> str | None:
    """What is wrong with the zip archive a `.keras` file is, or `None`."""
    if not zipfile.is_zipfile(path):
        return f"{path.stat().st_size} bytes that are not a zip archive"
    try:
        with zipfile.ZipFile(path) as archive:
            # testzip reads every member and checks its CRC: a damaged weights file shows here.
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        return str(error)
    return f"{bad} fails its checksum" if bad else None
