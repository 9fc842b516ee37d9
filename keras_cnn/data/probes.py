"""Generated image sets whose answer is known, for checking what kcnn says about a model.

- :func:`write_patch_images`: each image is noise with one small coloured patch at a random
  place, and the patch's colour is the class.  A heat map that shows where the model looked
  must peak on the patch; ``patches.csv`` says where each patch is.
- :func:`relabel_training_rows`: a split whose training part has a share of wrong labels
  (validation and test keep the true ones).  A model trained long enough memorises them
  and becomes overconfident: what temperature scaling is for.

Files are PNGs named by the SHA-1 of their bytes, with ``label.csv`` (``objectId,value``),
like the built-in sample set, so ``kcnn split`` and every command read them as they are.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pandas as pd

from keras_cnn.io import atomic_write_bytes, atomic_write_text

PATCH_COLOURS = {"red": (230, 30, 30), "green": (30, 200, 30), "blue": (40, 40, 230)}
PATCH_TABLE = "patches.csv"


def write_patch_images(folder: str | os.PathLike, per_class: int, size: int = 32, patch: int = 6,
                       seed: int = 0) -> Path:
    """Write ``per_class`` images of each colour in :data:`PATCH_COLOURS` into ``folder``; returns ``label.csv``.

    ``size`` x ``size`` RGB noise (grey levels 60..190, so no pixel looks like a patch) with a
    ``patch`` x ``patch`` square of the class colour at a random place.  ``patches.csv``
    (``objectId,value,top,left,size``) records each patch.
    """
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    generator = np.random.default_rng(seed)
    labels, patches = [], []
    for number in range(per_class * len(PATCH_COLOURS)):
        label = list(PATCH_COLOURS)[number % len(PATCH_COLOURS)]
        pixels = generator.integers(60, 191, size=(size, size, 3)).astype(np.uint8)
        top, left = (int(value) for value in generator.integers(0, size - patch + 1, size=2))
        pixels[top:top + patch, left:left + patch] = PATCH_COLOURS[label]
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, "PNG")
        data = buffer.getvalue()
        name = hashlib.sha1(data).hexdigest() + ".png"
        atomic_write_bytes(folder / name, data)
        labels.append(f"{name},{label}\n")
        patches.append(f"{name},{label},{top},{left},{patch}\n")
    atomic_write_text(folder / PATCH_TABLE, "objectId,value,top,left,size\n" + "".join(patches))
    return atomic_write_text(folder / "label.csv", "objectId,value\n" + "".join(labels))


def patch_hit(peak: tuple[float, float] | list[float], top: int, left: int, size: int, image_size: int) -> bool:
    """Whether a peak in relative coordinates (y, x in 0..1) lies on the patch (pixel boxes, edges included)."""
    y, x = peak[0] * image_size, peak[1] * image_size
    return top <= y <= top + size and left <= x <= left + size


def relabel_training_rows(split: pd.DataFrame, fraction: float, seed: int = 0) -> pd.DataFrame:
    """A copy of ``split`` (``objectId,value,type``) where ``fraction`` of the train rows got another label.

    Each chosen row gets one of the other labels at random; validation and test rows are
    left as they are.
    """
    split = split.copy()
    generator = np.random.default_rng(seed)
    labels = sorted(split["value"].astype(str).unique())
    train = np.flatnonzero((split["type"] == "train").to_numpy())
    chosen = generator.choice(train, size=int(round(fraction * len(train))), replace=False)
    values = split["value"].astype(str).to_numpy(dtype=object)
    for row in chosen:
        others = [label for label in labels if label != values[row]]
        values[row] = others[int(generator.integers(0, len(others)))]
    split["value"] = values
    return split
