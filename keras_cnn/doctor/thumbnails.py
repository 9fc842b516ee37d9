"""Small copies of every image, and their sizes, read once for the pixel checks.

The 32x32 RGB thumbnails are decoded by the training pipeline's own decoder
(:func:`keras_cnn.data.images.load_image`: a large JPEG at a reduced DCT scale, then an
area resize) in a parallel ``tf.data`` map.  Doctor compares images on them (perceptual
hash, near-duplicate check) and judges colour; the original sizes come from the file
headers (Pillow reads only the header).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from keras_cnn.progress import ProgressBar

THUMBNAIL_SIDE = 32
_BATCH = 256


def read_thumbnails(paths: Sequence[str], side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """uint8 RGB thumbnails (n, side, side, 3) of readable image files, in order."""
    import tensorflow as tf

    from keras_cnn.data.images import load_image

    thumbnails = np.empty((len(paths), side, side, 3), dtype=np.uint8)
    if not len(paths):
        return thumbnails
    dataset = tf.data.Dataset.from_tensor_slices(list(paths))
    dataset = dataset.map(lambda path: load_image(tf.io.read_file(path), (side, side), 3),
                          num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.batch(_BATCH).prefetch(tf.data.AUTOTUNE)
    position = 0
    with ProgressBar(len(paths), f"extracting thumbnails ({len(paths)} images)") as progress:
        for batch in dataset:
            thumbnails[position:position + len(batch)] = batch.numpy()
            position += len(batch)
            progress.update(position)
    return thumbnails


def image_sizes(paths: Sequence[str]) -> np.ndarray:
    """(height, width) of each image file from its header, as an int array (n, 2)."""
    sizes = np.zeros((len(paths), 2), dtype=np.int64)
    for position, path in enumerate(paths):
        with Image.open(os.fspath(path)) as image:
            width, height = image.size
        sizes[position] = (height, width)
    return sizes


def grey(thumbnails: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601, as Pillow's "L") of RGB thumbnails, float32 (n, side, side)."""
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return thumbnails.astype(np.float32) @ weights
