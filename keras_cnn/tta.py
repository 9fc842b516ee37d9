"""Test-time augmentation (TTA): average a model's class probabilities over fixed views.

The views are deterministic (no random draw), so ``kcnn evaluate --tta N``, ``kcnn predict
--tta N`` and the ``serving_tta`` signature of ``kcnn export --tta N`` give the same numbers
for the same image.  In order: the image itself, then crops of :data:`CROP_FRACTION` of the
side (centre, then the four corners) resized back to the input size; when the run was trained
with horizontal flips, each of those is followed by its mirror image (flips of a class it never
saw mirrored, e.g. digits, would hurt).  ``N`` takes the first N views.  Like fastai's
``tta``, the probabilities (not logits) are averaged.

Only TensorFlow operations are used, so the views go into an exported graph that plain
TensorFlow runs without kcnn.
"""

from __future__ import annotations

from typing import Any

from keras_cnn.errors import UserError

CROP_FRACTION = 0.9
_CROP_BOXES = {  # [y1, x1, y2, x2] in 0..1 of the image
    "crop_center": ((1 - CROP_FRACTION) / 2, (1 - CROP_FRACTION) / 2,
                    (1 + CROP_FRACTION) / 2, (1 + CROP_FRACTION) / 2),
    "crop_top_left": (0.0, 0.0, CROP_FRACTION, CROP_FRACTION),
    "crop_top_right": (0.0, 1 - CROP_FRACTION, CROP_FRACTION, 1.0),
    "crop_bottom_left": (1 - CROP_FRACTION, 0.0, 1.0, CROP_FRACTION),
    "crop_bottom_right": (1 - CROP_FRACTION, 1 - CROP_FRACTION, 1.0, 1.0),
}


def view_names(count: int, flip: bool) -> list[str]:
    """The names of the first ``count`` views (``flip``: mirrored views are allowed)."""
    names = []
    for base in ("identity", *_CROP_BOXES):
        names.append(base)
        if flip:
            names.append("flip" if base == "identity" else f"{base}_flip")
    limit = len(names)
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= limit:
        raise UserError(f"--tta must be between 1 and {limit} views"
                        f"{'' if flip else ' (the run was not trained with horizontal flips)'}, received: {count!r}")
    return names[:count]


def tta_views(images, names: list[str]):
    """``images`` [B, H, W, C] (float32) -> [len(names) * B, H, W, C], view by view."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    size = tf.shape(images)[1:3]
    batch = tf.shape(images)[0]
    views = []
    for name in names:
        base = name.removesuffix("_flip") if name != "flip" else "identity"
        view = images
        if base in _CROP_BOXES:
            boxes = tf.tile(tf.constant([_CROP_BOXES[base]], tf.float32), [batch, 1])
            view = tf.image.crop_and_resize(images, boxes, tf.range(batch), size, method="bilinear")
        if name == "flip" or name.endswith("_flip"):
            view = tf.reverse(view, axis=[2])
        views.append(tf.ensure_shape(view, images.shape))
    return tf.concat(views, axis=0)


def average_views(outputs, count: int):
    """Model outputs for ``count`` views stacked view by view [count * B, K] -> their mean [B, K]."""
    import tensorflow as tf

    outputs = tf.convert_to_tensor(outputs)
    return tf.reduce_mean(tf.reshape(outputs, tf.concat([[count, -1], tf.shape(outputs)[1:]], axis=0)), axis=0)


def trained_with_flips(run_config: Any) -> bool:
    """True when the run's training part was augmented with horizontal flips."""
    from keras_cnn.data.augment import configured_augmentation

    spec = configured_augmentation(run_config.data.augment, run_config.data.augmentation)
    return bool(spec is not None and spec.horizontal_flip)
