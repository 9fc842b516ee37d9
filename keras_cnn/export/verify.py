"""Checking an export against the Keras model it came from: on which images, and how close.

Every written format is run on a few encoded images (validation images of the run when
they can be found, plus generated images of several sizes and colour modes) and compared
with the Keras model; the export fails when the largest absolute difference exceeds
:data:`TOLERANCE`.  A format says what to compare (``ExportFormat.compare``: pairs of
expected and actual outputs); :func:`check_format` measures and judges them, here alone.
"""

from __future__ import annotations

from pathlib import Path

from keras_cnn.config import RunConfig
from keras_cnn.errors import RunFailure, UserError
from keras_cnn.export.spec import ModelSpec

TOLERANCE = 1e-4
VERIFICATION_IMAGES_FROM_RUN = 4


def check_format(name: str, export_format, model, spec: ModelSpec, path: Path, images: list[bytes]) -> float:
    """The largest absolute difference between the written ``path`` and the Keras model on ``images``.

    ``RunFailure`` above :data:`TOLERANCE` (NaN included), naming the format.
    """
    difference = max(max_abs_difference(expected, actual)
                     for expected, actual in export_format.compare(model, spec, path, images))
    if not difference <= TOLERANCE:  # also catches NaN
        raise RunFailure(f"{name} export differs from the Keras model: max abs difference {difference:.3g} "
                         f"> {TOLERANCE:g} on {len(images)} images; nothing was written")
    return difference


def call_once(model, spec: ModelSpec) -> None:
    """Run the model once on one blank image (builds what a converter needs traced)."""
    import numpy as np

    model(np.zeros((1, *spec.image_size, spec.channels), np.float32), training=False)


def decoded_pixels(images: list[bytes], spec: ModelSpec):
    """Encoded images -> float32 [batch, height, width, channels], exactly as training sees them."""
    import numpy as np
    import tensorflow as tf

    from keras_cnn.data.images import load_image

    # Traced with unknown image shapes, as in the tf.data pipeline and the serving graph.
    decode = tf.function(
        lambda encoded: load_image(encoded, spec.image_size, spec.channels, spec.resize_mode),
        input_signature=[tf.TensorSpec([], tf.string)], autograph=False,
    )
    return np.stack([decode(tf.constant(encoded)).numpy() for encoded in images]).astype(np.float32)


def keras_outputs(model, pixels):
    """The Keras model's raw output (softmax or sigmoid) as float32 numpy."""
    import numpy as np

    return np.asarray(model(pixels, training=False), dtype=np.float32)


def keras_probabilities(model, pixels, spec: ModelSpec):
    """The Keras model's class probabilities (a binary sigmoid becomes [1 - p, p])."""
    import numpy as np

    output = keras_outputs(model, pixels)
    return np.concatenate([1.0 - output, output], axis=-1) if spec.binary else output


def max_abs_difference(expected, actual) -> float:
    """Largest absolute difference between two arrays (inf when their shapes differ)."""
    import numpy as np

    expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
    if expected.shape != actual.shape:
        return float("inf")
    return float(np.max(np.abs(expected - actual))) if expected.size else 0.0


def verification_images(config: RunConfig, spec: ModelSpec) -> list[bytes]:
    """A few encoded images to check an export with: the run's own plus generated ones.

    The generated images cover what the serving signature must handle: grey, RGB and RGBA,
    PNG and JPEG, sizes smaller, larger and of another aspect ratio than the model's input.
    """
    return run_validation_images(config, VERIFICATION_IMAGES_FROM_RUN) + generated_images(spec.image_size)


def run_validation_images(config: RunConfig, limit: int) -> list[bytes]:
    """Bytes of up to ``limit`` validation images of the run's split, if they are still on disk."""
    from keras_cnn.data.files import locate_image
    from keras_cnn.data.parts import SplitParts

    if not config.data.split or not config.data.images:
        return []
    try:
        rows = SplitParts(config.data).rows("validation")
    except UserError:
        return []  # verification still runs on the generated images
    found: list[bytes] = []
    for object_id in rows["objectId"]:
        path = locate_image(config.data.images, object_id)
        if path is not None:
            found.append(path.read_bytes())
        if len(found) >= limit:
            break
    return found


def generated_images(image_size: tuple[int, int]) -> list[bytes]:
    """Deterministic smooth test images (gradients plus noise) in several sizes and modes."""
    import numpy as np
    import tensorflow as tf

    height, width = image_size
    generator = np.random.default_rng(0)
    sizes = [(height, width), (max(height // 2, 8), max(width // 3, 8)), (height * 2 + 3, width + 17)]
    encoded = []
    for number, (rows, columns) in enumerate(sizes):
        y, x = np.mgrid[0:rows, 0:columns]
        base = np.stack([255 * y / max(rows - 1, 1), 255 * x / max(columns - 1, 1),
                         127 + 120 * np.sin((x + y) / 5.0)], axis=-1)
        pixels = np.clip(base + generator.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
        if number == 0:
            encoded.append(tf.io.encode_png(pixels).numpy())                                      # RGB PNG
            encoded.append(tf.io.encode_jpeg(pixels, quality=90).numpy())                         # RGB JPEG
        elif number == 1:
            encoded.append(tf.io.encode_png(pixels[..., :1]).numpy())                             # grey PNG
        else:
            alpha = np.full((rows, columns, 1), 200, np.uint8)
            encoded.append(tf.io.encode_png(np.concatenate([pixels, alpha], axis=-1)).numpy())  # RGBA PNG
    return encoded
