"""A picture of what augmentation and normalisation do to an image."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from kcap.data.check import image_errors
from kcap.data.images import load_image
from kcap.model.augmentation import ImageAugmentation
from kcap.model.preprocessing import ImagePreprocessing
from kcap.utils.figures import check_figure_path


def _displayable(image: np.ndarray) -> np.ndarray:
    """Stretches any range to [0, 1] per image, so normalised pixels can be shown."""
    low, high = float(image.min()), float(image.max())
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def preview_augmentation(
    image_path: str | Path,
    output: str | Path,
    augmentation: ImageAugmentation,
    preprocessing: ImagePreprocessing,
    image_size: Sequence[int],
    num_augmented: int = 6,
) -> Path:
    """Saves the original, the normalised and `num_augmented` augmented versions side by side.

    The image is resized to `image_size` first, as the model sees it; the
    augmented versions are what one training epoch could draw.

    Example:

    ```python
    preview_augmentation("dog.jpg", "preview.png", ImageAugmentation(zoom=0.1, brightness=0.2, seed=0),
                         ImagePreprocessing("tf"), (299, 299))
    ```
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    output = check_figure_path(output)
    bad = image_errors([str(image_path)], full_decode=True)
    if bad:
        raise ValueError(f"Cannot preview {bad[0]}")
    pixels = load_image(str(image_path), image_size).numpy().astype("float32")
    normalised = np.asarray(preprocessing(pixels[None]))[0]
    augmented = [
        np.asarray(augmentation(pixels[None], training=True))[0] for _ in range(num_augmented)
    ]
    panels = [("original", pixels / 255.0), (f"normalised ({preprocessing.mode})", _displayable(normalised))]
    panels += [(f"augmented {i + 1}", np.clip(a / 255.0, 0, 1)) for i, a in enumerate(augmented)]

    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, image) in zip(axes.flat, panels):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
    figure.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    return output
