"""Where figures (attention plots, augmentation previews) may be saved."""

from __future__ import annotations

from pathlib import Path

# What matplotlib writes with what kcap installs. Checked up front, because savefig would add
# ".png" to a name without one, and the file written would not be the one named.
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg")


def check_figure_path(path: str | Path) -> Path:
    """`path` as a `Path`, or an error saying why a figure cannot be written there.

    Example: `check_figure_path("attention.png")` → `Path("attention.png")`.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give a file name such as {path / 'figure.png'}.")
    if path.suffix.lower() not in FIGURE_SUFFIXES:
        raise ValueError(f"{path}: a figure's file name must end in one of {', '.join(FIGURE_SUFFIXES)}.")
    return path
