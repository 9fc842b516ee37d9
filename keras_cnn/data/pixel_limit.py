"""The largest image kcnn decodes: a limit on pixels, read from the file's header.

A 10000 x 10000 PNG can be a few hundred kilobytes and still need gigabytes once decoded
(a "decompression bomb").  The header says how large an image is without decoding it, so
an image over the limit is refused before any memory goes to it.  The default is
Pillow's own ``Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels, about 0.25 GB as RGB).
"""

from __future__ import annotations

import io
import re
import warnings

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485  # Pillow's Image.MAX_IMAGE_PIXELS
# The largest limit one may set: above every image a format can hold (a PNG's (2^31 - 1)^2 pixels),
# and within the 64-bit integers the input pipelines compare sizes in.
LARGEST_PIXEL_LIMIT = 2**62


def image_pixels(data: bytes) -> int | None:
    """Width x height from an encoded image's header; None when Pillow does not recognise the data.

    Only the header is read; nothing is decoded.  (Many files at once: the tf.data check of
    :func:`keras_cnn.data.files.find_bad_images` reads the same headers in parallel.)
    """
    from PIL import Image   # here: keras_cnn.config takes the limit from this module, and stays light

    with warnings.catch_warnings():
        # Pillow warns above its own limit and refuses above twice that; the caller's limit decides.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                return int(image.width) * int(image.height)
        except Image.DecompressionBombError as error:
            # "Image size (N pixels) exceeds limit of ...": Pillow names the size it refused.
            found = re.search(r"\((\d+) pixels\)", str(error))
            return int(found.group(1)) if found else None
        except Exception:  # noqa: BLE001 - not an image Pillow knows: whoever decodes it says why
            return None


def pixel_limit_problem(data: bytes, limit: int | None = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
    """Why ``data`` is refused under ``limit`` pixels; None when within it, of unknown size, or no limit."""
    if not limit:
        return None
    pixels = image_pixels(data)
    if pixels is None or pixels <= limit:
        return None
    return over_limit_message(pixels, limit)


def over_limit_message(pixels: int, limit: int) -> str:
    """How an image over the limit is described, wherever it is found."""
    return f"the image has {pixels:,} pixels, over the limit of {limit:,}"
