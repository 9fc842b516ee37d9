"""Heat maps on the pictures people look at: a map over the model's input, laid over the image as given.

An export's ``serving_explain`` signature returns each image's heat map over the model's
input (height x width of the model, 0..1).  The image as given may be of any size, and the
export fitted it to the model's input by its resize mode (``stretch``, ``crop``: the centre
of the image's aspect ratio, ``pad``: the whole image inside black bars; see
:func:`keras_cnn.data.images.resize_image`).  :func:`input_region` says where the model's
input lies on the image, so :func:`peak_on_image` gives the map's maximum in the image's own
relative coordinates (0..1 from its top-left corner) and :func:`overlay` draws the map over
the image.  numpy and Pillow only: ``kcnn predict`` uses this without TensorFlow's help.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

# The longest side of an overlay picture: a photo's own size would make large, slow PNGs.
OVERLAY_LONGEST_SIDE = 1024
OVERLAY_OPACITY = 0.45


def input_region(image_height: int, image_width: int, input_size: tuple[int, int],
                 resize_mode: str) -> dict[str, tuple[float, float, float, float]]:
    """Where the model's input and the image meet: ``{"image": box, "input": box}``.

    Both boxes are (top, left, bottom, right) in relative coordinates, ``image`` of the
    image as given and ``input`` of the model's input: the part of the image the model saw
    and where it lies in the input.  ``crop`` sees the centre of the image's aspect ratio,
    ``pad`` puts the whole image between black bars, ``stretch`` maps one onto the other.
    """
    height, width = int(input_size[0]), int(input_size[1])
    whole = (0.0, 0.0, 1.0, 1.0)
    if resize_mode == "crop":
        # As the export crops: the largest centred box of the input's aspect ratio (whole pixels).
        crop_width = min(image_width, image_height * width / height)
        crop_height = min(image_height, image_width * height / width)
        crop_height, crop_width = max(int(crop_height), 1), max(int(crop_width), 1)
        top, left = (image_height - crop_height) // 2, (image_width - crop_width) // 2
        return {"image": (top / image_height, left / image_width, (top + crop_height) / image_height,
                          (left + crop_width) / image_width), "input": whole}
    if resize_mode == "pad":
        scale = min(height / image_height, width / image_width)
        fitted_height = min(max(int(round(image_height * scale)), 1), height)
        fitted_width = min(max(int(round(image_width * scale)), 1), width)
        top, left = (height - fitted_height) // 2, (width - fitted_width) // 2
        return {"image": whole, "input": (top / height, left / width, (top + fitted_height) / height,
                                          (left + fitted_width) / width)}
    return {"image": whole, "input": whole}


def peak(heatmap: Any) -> tuple[float, float]:
    """(y, x) of the map's maximum, the centre of its cell, in relative coordinates of the map."""
    heatmap = np.asarray(heatmap, dtype=np.float64)
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return (row + 0.5) / heatmap.shape[0], (column + 0.5) / heatmap.shape[1]


def peak_on_image(heatmap: Any, image_height: int, image_width: int, resize_mode: str) -> list[float]:
    """The map's maximum as ``[y, x]`` relative to the image as given (0..1 from its top-left corner).

    ``heatmap`` is over the model's input; a maximum in a ``pad`` bar is moved to the
    nearest edge of the image.
    """
    heatmap = np.asarray(heatmap, dtype=np.float64)
    region = input_region(image_height, image_width, heatmap.shape, resize_mode)
    inside, outside = region["input"], region["image"]
    y, x = peak(heatmap)
    relative_y = np.clip((y - inside[0]) / (inside[2] - inside[0]), 0.0, 1.0)
    relative_x = np.clip((x - inside[1]) / (inside[3] - inside[1]), 0.0, 1.0)
    return [float(outside[0] + relative_y * (outside[2] - outside[0])),
            float(outside[1] + relative_x * (outside[3] - outside[1]))]


def colour_map(values: Any) -> np.ndarray:
    """0..1 values -> uint8 RGB, blue (0) through green to red (1)."""
    values = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float64)), 0.0, 1.0)
    red = np.clip(2.0 * values - 0.5, 0, 1)
    green = np.clip(1.5 - np.abs(4.0 * values - 2.0), 0, 1)
    blue = np.clip(1.5 - 2.0 * values, 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def overlay(picture: Image.Image, heatmap: Any, resize_mode: str,
            longest_side: int = OVERLAY_LONGEST_SIDE) -> Image.Image:
    """``picture`` (as given) with ``heatmap`` (over the model's input) drawn on the part the model saw.

    The result is RGB, at most ``longest_side`` pixels on its longer side.
    """
    picture = picture.convert("RGB")
    scale = min(1.0, longest_side / max(picture.size))
    if scale < 1.0:
        picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
                                 Image.BILINEAR)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    region = input_region(picture.height, picture.width, heatmap.shape, resize_mode)
    inside, outside = region["input"], region["image"]
    rows, columns = heatmap.shape
    seen = heatmap[int(round(inside[0] * rows)):max(int(round(inside[2] * rows)), 1),
                   int(round(inside[1] * columns)):max(int(round(inside[3] * columns)), 1)]
    top, left = int(round(outside[0] * picture.height)), int(round(outside[1] * picture.width))
    bottom, right = int(round(outside[2] * picture.height)), int(round(outside[3] * picture.width))
    size = (max(right - left, 1), max(bottom - top, 1))
    stretched = np.asarray(Image.fromarray(seen, mode="F").resize(size, Image.BILINEAR))
    pixels = np.asarray(picture, dtype=np.float32).copy()
    weight = OVERLAY_OPACITY * np.clip(stretched, 0, 1)[..., None] ** 0.5
    part = pixels[top:top + size[1], left:left + size[0]]
    pixels[top:top + size[1], left:left + size[0]] = (1 - weight) * part + weight * colour_map(stretched)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB")


def overlay_png(picture: Image.Image, heatmap: Any, resize_mode: str) -> bytes:
    """:func:`overlay` as PNG bytes."""
    buffer = io.BytesIO()
    overlay(picture, heatmap, resize_mode).save(buffer, "PNG")
    return buffer.getvalue()
