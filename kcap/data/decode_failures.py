"""Training-time decode failures: an image TensorFlow cannot decode mid-run, named.

Example:

```python
from kcap.data.decode_failures import explain_decode_failures

with explain_decode_failures(train_images, on_bad_image="error"):
    model.fit(dataset)       # a damaged image stops the fit with a DataCheckError naming it
```
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence

from kcap.data.check import DataCheckError, image_errors
from kcap.utils import count

log = logging.getLogger("kcap")


@contextlib.contextmanager
def explain_decode_failures(images: Sequence, on_bad_image: str = "error") -> Iterator[None]:
    """Turns an image that TensorFlow cannot decode, mid-run, into a `DataCheckError` naming it.

    The data check reads each image's header and end, not all of it (that is
    `full_decode`), so damage inside a file shows only when a batch decodes it.
    Then every image of `images` (paths or `CaptionedImage`s) is decoded to
    find which, and the error says what to do. Other errors pass unchanged.
    """
    import tensorflow as tf

    try:
        yield
    except tf.errors.InvalidArgumentError as error:
        if "decode" not in str(error).lower():
            raise
        log.warning("An image could not be decoded; decoding all %d images to find which.", len(images))
        paths = [str(getattr(image, "path", image)) for image in images]
        bad = image_errors(paths, full_decode=True, progress=True)
        if not bad:
            raise
        skip = "" if on_bad_image == "skip" else " --on-bad-image skip"
        raise DataCheckError(
            f"{count(len(bad), 'image')} cannot be decoded, damage inside the file that the data check at the "
            f"start does not read:\n" + "\n".join(f"  {problem}" for problem in bad) + "\n"
            f"Fix or remove them, or add --full-decode{skip} to find and leave out such images before training. "
            "Run the same command again to go on where it stopped."
        ) from None
