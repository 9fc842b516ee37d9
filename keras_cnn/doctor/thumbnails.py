"""Small copies of every image, their sharpness and sizes, read once for the pixel checks.

Each image is decoded once, by the training pipeline's own decoder (a large JPEG at a
reduced DCT scale), in a parallel ``tf.data`` map, and resized twice: a 32x32 RGB
thumbnail, on which doctor compares images (perceptual hash, near-duplicate check) and
judges colour, and a grey copy (shrunk to at most 128 pixels a side, never enlarged)
whose blur is measured there and then: the blur effect of Crété-Roffet et al. (2007,
also ``skimage.measure.blur_effect``), how little blurring the picture once more changes
its neighbouring-pixel differences; 0 = sharp, 1 = fully blurred, whatever the contrast.
The original sizes come from the file headers (Pillow reads only the header).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

from keras_cnn.progress import ProgressBar

THUMBNAIL_SIDE = 32
SHARPNESS_SIDE = 128
# Thumbnails whose grey levels deviate less than this are blank frames: they look alike
# and have no colour whatever they show (the dark and light checks report them).
FLAT_DEVIATION = 3.0
_BATCH = 256
_LUMA_WEIGHTS = (0.299, 0.587, 0.114)   # ITU-R BT.601, as Pillow's "L"


def _filtered(image, kernel):
    """``image`` (height, width, 1) correlated with ``kernel``, edges mirrored (scipy.ndimage's "reflect")."""
    import tensorflow as tf

    rows, columns = kernel.shape
    padded = tf.pad(image, [[rows // 2, rows // 2], [columns // 2, columns // 2], [0, 0]], mode="SYMMETRIC")
    return tf.nn.conv2d(padded[None], tf.constant(kernel, tf.float32)[:, :, None, None], 1, "VALID")[0]


def _blur_effect(grey):
    """The blur effect (0 sharp .. 1 blurred) of a grey image (height, width, 1) of at least 9 pixels a side.

    As ``skimage.measure.blur_effect`` (h_size 9): per axis, the Sobel edges of the image
    and of the image averaged over 9 pixels along that axis; the share of edge strength the
    averaging does not take away; the larger of the two axes.
    """
    import tensorflow as tf

    sobel = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float32)
    effects = []
    for axis in (0, 1):
        edge_kernel = sobel if axis == 0 else sobel.T
        average = np.full((9, 1) if axis == 0 else (1, 9), 1 / 9, dtype=np.float32)
        sharp = tf.abs(_filtered(grey, edge_kernel))[2:-1, 2:-1]
        soft = tf.abs(_filtered(_filtered(grey, average), edge_kernel))[2:-1, 2:-1]
        total = tf.reduce_sum(sharp)
        lost = tf.reduce_sum(tf.maximum(sharp - soft, 0.0))
        effects.append(tf.math.divide_no_nan(tf.abs(total - lost), total))
    return tf.reduce_max(tf.stack(effects))


def read_pixels(paths: Sequence[str], side: int = THUMBNAIL_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB thumbnails (n, side, side, 3) and blur effects (n,) of readable image files, in order."""
    import tensorflow as tf

    from keras_cnn.data.images import decode_image, resize_image

    def measure(path):
        image = decode_image(tf.io.read_file(path), 3, target_size=(SHARPNESS_SIDE, SHARPNESS_SIDE))
        thumbnail = resize_image(image, (side, side))
        # Shrunk, never enlarged: an enlarged picture would look blurry for being small.
        shape = tf.cast(tf.shape(image)[:2], tf.float32)
        scale = tf.minimum(1.0, SHARPNESS_SIDE / tf.reduce_max(shape))
        size = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), 9)
        # A weighted sum, not tf.image.rgb_to_grayscale: inside tf.data its cast + matrix product
        # is fused into a oneDNN kernel that logs an error line for uint8 input on this CPU.
        luma = tf.reduce_sum(tf.cast(image, tf.float32) * _LUMA_WEIGHTS, axis=-1, keepdims=True)
        grey = tf.image.resize(luma, size, method="area")
        return tf.ensure_shape(thumbnail, (side, side, 3)), _blur_effect(grey)

    thumbnails = np.empty((len(paths), side, side, 3), dtype=np.uint8)
    blur = np.empty(len(paths), dtype=np.float32)
    if not len(paths):
        return thumbnails, blur
    dataset = tf.data.Dataset.from_tensor_slices(list(paths))
    dataset = dataset.map(measure, num_parallel_calls=tf.data.AUTOTUNE).batch(_BATCH).prefetch(tf.data.AUTOTUNE)
    position = 0
    with ProgressBar(len(paths), f"extracting thumbnails ({len(paths)} images)") as progress:
        for batch, batch_blur in dataset:
            thumbnails[position:position + len(batch)] = batch.numpy()
            blur[position:position + len(batch)] = batch_blur.numpy()
            position += len(batch)
            progress.update(position)
    return thumbnails, blur


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
    return thumbnails.astype(np.float32) @ np.asarray(_LUMA_WEIGHTS, dtype=np.float32)


def is_flat(grey_thumbnails: np.ndarray) -> np.ndarray:
    """Which grey thumbnails are blank frames (deviation under :data:`FLAT_DEVIATION`)."""
    return grey_thumbnails.reshape(len(grey_thumbnails), -1).std(axis=1) < FLAT_DEVIATION
