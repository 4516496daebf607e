"""What a request may hold: bodies within a size limit, images checked from their header before decoding.

Every refusal is a `RequestError` with an HTTP status and a message that says
what was wrong and what to do; the app turns it into `{"error": message}`.

Example:

>>> try:
...     check_image(b"hello", max_pixels=1_000_000)
... except RequestError as error:
...     print(error.status, error.message)
415 The upload is not an image TensorFlow can read (JPEG, PNG, GIF, BMP or WebP); got 5 bytes that are none of these.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from collections.abc import AsyncIterator

from PIL import Image, UnidentifiedImageError

# Pillow's names of what TensorFlow's `decode_image` reads (MPO: a phone camera's JPEG).
IMAGE_FORMATS = {"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"}


class RequestError(Exception):
    """A request kcap serve refuses: `status` (4xx, 503, 504) and a message for the client."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


async def read_body(chunks: AsyncIterator[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    too_large = RequestError(
        413, f"The request is larger than this server's limit of {max_bytes / 2**20:g} MB (--max-upload-mb); "
             "send a smaller image (a photo's pixels beyond the model's input size are not used anyway)."
    )
    if content_length is not None and content_length.isdigit() and int(content_length) > max_bytes:
        raise too_large
    body = bytearray()
    async for chunk in chunks:
        body += chunk
        if len(body) > max_bytes:
            raise too_large
    return bytes(body)


def check_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Checks an upload from its header alone, before anything decodes it: returns (width, height).

    Refuses (`RequestError`) an empty upload (400), one that is no image
    TensorFlow reads (415) and one of more than `max_pixels` pixels (413:
    a decompression bomb is small in bytes and huge in memory once decoded).
    """
    if not data:
        raise RequestError(400, "The image is empty (0 bytes); choose an image file (JPEG, PNG, GIF, BMP or WebP).")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below says it better
            with Image.open(io.BytesIO(data)) as image:
                width, height, kind = image.width, image.height, image.format
    except Image.DecompressionBombError as error:
        raise RequestError(413, f"The image has too many pixels ({error}); this server takes at most "
                                f"{max_pixels:,} (--max-pixels). Send a smaller image.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise RequestError(415, "The upload is not an image TensorFlow can read (JPEG, PNG, GIF, BMP or WebP); "
                                f"got {len(data):,} bytes that are none of these.") from None
    if kind not in IMAGE_FORMATS:
        raise RequestError(415, f"{kind} images are not supported; send JPEG, PNG, GIF, BMP or WebP.")
    if width * height > max_pixels:
        raise RequestError(413, f"The image is {width}x{height} = {width * height:,} pixels; this server takes at "
                                f"most {max_pixels:,} (--max-pixels). Send a smaller image.")
    return width, height


def instance_bytes(instance: object, index: int) -> bytes:
    """One TensorFlow Serving instance → image bytes: `{"b64": ...}` or `{"image_bytes": {"b64": ...}}`."""
    if isinstance(instance, dict) and set(instance) == {"image_bytes"}:
        instance = instance["image_bytes"]
    if not (isinstance(instance, dict) and isinstance(instance.get("b64"), str)):
        raise RequestError(400, f'instances[{index}] must be {{"b64": "<base64 image bytes>"}} '
                                f'or {{"image_bytes": {{"b64": "..."}}}}.')
    try:
        return base64.b64decode(instance["b64"], validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"instances[{index}].b64 is not valid base64.") from None
