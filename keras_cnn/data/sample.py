"""The built-in sample dataset: small, learnable, deterministic images of coloured shapes.

Files are JPEGs named by the SHA-1 of their bytes, plus ``label.csv`` (``objectId,value``),
the layout of the EfficientNet transfer-learning blog post's data, so the whole flow (split, train,
transfer, evaluate, export, predict) can run without downloading anything.
"""

from __future__ import annotations

import colorsys
import hashlib
import io
import math
from pathlib import Path

import numpy as np

from keras_cnn.config import MAX_SAMPLE_PER_CLASS
from keras_cnn.errors import UserError
from keras_cnn.io import atomic_write_bytes, atomic_write_text

# Each class is a shape drawn in its own hue family, on a noisy background: learnable
# from shape or colour, by a from-scratch net or by a frozen base with random weights.
SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "bar")


def _shape_mask(shape: str, size: int, center, radius: float, angle: float) -> np.ndarray:
    """Boolean mask of ``shape`` on a size×size grid."""
    ys, xs = np.mgrid[0:size, 0:size].astype("float32")
    x = xs - center[0]
    y = ys - center[1]
    # Rotate coordinates so shapes appear at different angles.
    cos, sin = math.cos(angle), math.sin(angle)
    u, v = cos * x + sin * y, -sin * x + cos * y
    distance = np.sqrt(x * x + y * y)
    if shape == "circle":
        return distance <= radius
    if shape == "square":
        return (np.abs(u) <= radius * 0.8) & (np.abs(v) <= radius * 0.8)
    if shape == "triangle":
        return (v <= radius * 0.6) & (v >= -radius + 1.7 * np.abs(u))
    if shape == "cross":
        arm = radius * 0.3
        return ((np.abs(u) <= arm) & (np.abs(v) <= radius)) | ((np.abs(v) <= arm) & (np.abs(u) <= radius))
    if shape == "ring":
        return (distance <= radius) & (distance >= radius * 0.55)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= radius
    if shape == "star":
        theta = np.arctan2(v, u)
        return distance <= radius * (0.55 + 0.45 * np.cos(5 * theta) ** 2)
    return (np.abs(u) <= radius) & (np.abs(v) <= radius * 0.3)  # bar


def render_sample_image(class_index: int, size: int, rng: np.random.Generator, num_classes: int) -> np.ndarray:
    """One uint8 RGB image of class ``class_index``."""
    background = rng.integers(20, 90, size=3).astype("float32")
    image = np.empty((size, size, 3), dtype="float32")
    image[:] = background
    image += rng.normal(0, 12, size=image.shape)
    radius = rng.uniform(0.22, 0.38) * size
    center = rng.uniform(radius, size - radius, size=2)
    mask = _shape_mask(SHAPES[class_index % len(SHAPES)], size, center, radius, rng.uniform(0, math.pi))
    hue = (class_index / num_classes + rng.uniform(-0.06, 0.06)) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0), rng.uniform(0.75, 1.0))) * 255
    image[mask] = colour + rng.normal(0, 8, size=(int(mask.sum()), 3))
    return np.clip(image, 0, 255).astype("uint8")


def write_sample_data(out_dir: str | Path, classes: int = 3, per_class: int = 120, size: int = 128,
                      seed: int = 0) -> dict:
    """Write ``classes × per_class`` JPEGs named ``<sha1>.jpg`` and ``label.csv`` into ``out_dir``.

    Labels are the shape names.  The same arguments always give the same files.
    Returns a summary (folder, label file, counts per label).
    """
    from PIL import Image

    if not 2 <= classes <= len(SHAPES):
        raise UserError(f"--classes must be between 2 and {len(SHAPES)}, received: {classes}")
    if not 1 <= per_class <= MAX_SAMPLE_PER_CLASS:
        raise UserError(f"--per-class must be from 1 to {MAX_SAMPLE_PER_CLASS:,}, received: {per_class}")
    if size < 16:
        raise UserError(f"--size must be at least 16 pixels, received: {size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    # Interleave classes so file order (which the split keeps) mixes labels.
    for index in range(per_class):
        for class_index in range(classes):
            pixels = render_sample_image(class_index, size, rng, classes)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
            payload = buffer.getvalue()
            object_id = f"{hashlib.sha1(payload).hexdigest()}.jpg"
            atomic_write_bytes(out_dir / object_id, payload)
            rows.append((object_id, SHAPES[class_index]))
    label_csv = out_dir / "label.csv"
    atomic_write_text(label_csv, "objectId,value\n" + "".join(f"{oid},{label}\n" for oid, label in rows))
    return {"images": str(out_dir), "label_csv": str(label_csv), "count": len(rows),
            "per_label": {SHAPES[index]: per_class for index in range(classes)}, "size": size}
