"""Pictures of where the decoder looked: one panel per word of a caption.

Each panel shows the image with one word's attention weights over the
feature-map locations laid over it: the (h, w) map is upsampled to the
image size with bilinear interpolation (`tf.image.resize`, which also
smooths the blocky feature grid) and drawn as a heat map. All panels of a
caption share one colour scale, from 0 to the largest weight any of its
words gives a location, so a word that looks at one spot stands out
beside a word whose attention is spread over the whole image (a
per-panel scale would paint near-uniform attention as hot everywhere).

Layout: panels go left to right, top to bottom, `columns` per row (4 by
default), so `n` words give `ceil(n / columns)` rows; each panel is titled
with its word. There is one panel per entry of `words` and none for
`<end>`: `TrainedRun.caption_files` returns `num_words + 1` attention rows
(the last is where the decoder looked when it said `<end>`), and the extra
row is ignored. To see it, pass `words + ["<end>"]`.

Drawing uses matplotlib's Agg canvas directly (no pyplot, no display, no
global backend switch), so it is safe in servers, tests and callbacks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from kcap.utils.figures import check_figure_path
from kcap.utils.files import atomic_path

PANEL_INCHES = 2.4
DPI = 100


def attention_map(weights: np.ndarray, feature_shape: Sequence[int], image_size: Sequence[int]) -> np.ndarray:
    """One word's weights over `h * w` locations → a smooth (height, width) map of weights.

    Bilinear upsampling keeps the values within the weights' range.

    Example:

    >>> heat = attention_map(np.eye(1, 9)[0], (3, 3), (30, 30))
    >>> heat.shape, bool(heat.max() <= 1.0), bool(heat[0, 0] > heat[-1, -1])
    ((30, 30), True, True)
    """
    h, w = (int(d) for d in feature_shape[:2])
    weights = np.asarray(weights, np.float32)
    if weights.shape != (h * w,):
        raise ValueError(f"Attention over {weights.shape} locations does not fit a {h}x{w} feature map.")
    grid = tf.reshape(weights, (h, w, 1))
    return tf.image.resize(grid, [int(s) for s in image_size[:2]], method="bilinear")[..., 0].numpy()


def grid_shape(num_words: int, columns: int = 4) -> tuple[int, int]:
    """(rows, columns) of the panel grid for `num_words` words.

    >>> grid_shape(6), grid_shape(3), grid_shape(8)
    ((2, 4), (1, 3), (2, 4))
    """
    columns = max(1, min(int(columns), num_words))
    return math.ceil(num_words / columns), columns


def _display_image(image: np.ndarray, longest_side: int) -> np.ndarray:
    """Shrinks a large photo for drawing; the attention map is drawn at this size too."""
    height, width = image.shape[:2]
    scale = longest_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(height * scale)), max(1, round(width * scale)))
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8).numpy()


def attention_figure(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    feature_shape: Sequence[int],
    columns: int = 4,
    longest_side: int = 256,
    alpha: float = 0.6,
) -> Figure:
    """A matplotlib `Figure` with one attention panel per word (layout in the module docstring).

    Args:
        image: uint8 (height, width, 3) pixels, any size; the photo the caption is of.
        words: the caption's words, one panel each.
        attention: (at least len(words), h * w) weights; row `i` is word `i`'s.
        feature_shape: (h, w, ...) of the model's feature map (`model.feature_shape`).
        columns: panels per row.
        longest_side: the image is shrunk to this many pixels on its longest side.
        alpha: opacity of the heat map.

    Example:

    ```python
    fig = attention_figure(pixels, ["a", "red", "circle"], attention, model.feature_shape)
    assert [ax.get_title() for ax in fig.axes] == ["a", "red", "circle"]
    ```
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"Expected an RGB image of shape (height, width, 3), got {image.shape}.")
    words = list(words)
    if not words:
        raise ValueError("No words to plot: the caption is empty.")
    attention = np.asarray(attention, np.float32)
    if attention.ndim != 2 or attention.shape[0] < len(words):
        raise ValueError(
            f"Attention of shape {attention.shape} does not hold a row for each of the {len(words)} words."
        )
    shown = _display_image(image.astype(np.uint8), longest_side)
    height, width = shown.shape[:2]
    rows, columns = grid_shape(len(words), columns)
    aspect = height / width
    fig = Figure(figsize=(columns * PANEL_INCHES, rows * PANEL_INCHES * aspect + rows * 0.3), dpi=DPI)
    FigureCanvasAgg(fig)
    heats = [attention_map(attention[index], feature_shape, (height, width)) for index in range(len(words))]
    top = max(float(heat.max()) for heat in heats) or 1.0
    for index, (word, heat) in enumerate(zip(words, heats)):
        ax = fig.add_subplot(rows, columns, index + 1)
        ax.imshow(shown)
        ax.imshow(heat, cmap="inferno", alpha=alpha, vmin=0.0, vmax=top)
        ax.set_title(word, fontsize=11)
        ax.set_axis_off()
    fig.tight_layout(pad=0.4)
    return fig


def figure_to_array(fig: Figure) -> np.ndarray:
    """Renders a figure to uint8 RGB pixels (height, width, 3), e.g. for `tf.summary.image`."""
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def image_pixels(path: str | Path) -> np.ndarray:
    """An image file as the uint8 RGB pixels kcap's pipeline decodes it to, to draw behind the heat.

    TensorFlow's decoder, as training and captioning use: PIL's `convert("RGB")`
    would clip a 16-bit PNG to white.
    """
    data = tf.io.read_file(os.fsencode(path))
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8).numpy()


def plot_attention(
    image: np.ndarray,
    words: Sequence[str],
    attention: np.ndarray,
    feature_shape: Sequence[int],
    path: str | Path | None = None,
    columns: int = 4,
) -> np.ndarray:
    """Draws one attention panel per word; writes it to `path` if given; returns its pixels.

    Returns uint8 RGB (height, width, 3). See `attention_figure` for the
    arguments and the module docstring for the layout.

    Example:

    ```python
    trained = load_run("runs/shapes")
    result = trained.caption_files(["cat.jpg"])[0]
    pixels = image_pixels("cat.jpg")
    plot_attention(pixels, result["caption"].split(), result["attention"],
                   trained.model.feature_shape, path="cat_attention.png")
    ```
    """
    if path is not None:
        path = check_figure_path(path)
    fig = attention_figure(image, words, attention, feature_shape, columns=columns)
    pixels = figure_to_array(fig)
    if path is not None:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:].lower(), dpi=DPI)
    return pixels
