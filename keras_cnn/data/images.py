"""Decode and resize one image with TensorFlow ops.

The training pipeline and the exported SavedModel both call :func:`load_image`, so an
exported model sees exactly the pixels the model was trained on.  Every kcnn model takes
float32 pixels in 0..255 of shape (height, width, channels); the scaling its weights
expect lives inside the model.

A JPEG much larger than the model's input is decoded at 1/2, 1/4 or 1/8 scale in the DCT
domain (libjpeg's scaled decoding) before the resize: most of a photo's pixels would be
averaged away by the resize anyway, and skipping them makes decoding several times faster.
"""

from __future__ import annotations

import tensorflow as tf

from keras_cnn.choices import ResizeMode, names

RESIZE_MODES = names(ResizeMode)

# The scales libjpeg decodes at directly (1/ratio of each side), smallest reduction first.
JPEG_RATIOS = (1, 2, 4, 8)


# Any JPEG of at least 8x8 pixels decodes at 1/8 scale for this target: enough to learn
# whether a file decodes at all (libjpeg reads the whole compressed stream at every scale).
CHECK_TARGET_SIZE = (1, 1)


def jpeg_decode_ratio(encoded: tf.Tensor, target_size: tuple[int, int] | None) -> tf.Tensor:
    """The largest of 1, 2, 4, 8 that keeps a JPEG at least ``target_size`` on both sides.

    Reads only the JPEG header.  Not a JPEG, or no ``target_size``: 1.  A JPEG is scaled
    only when both of its sides are at least ``ratio`` times the target's, so the scaled
    image is still shrunk (never enlarged) by the resize that follows.
    """
    return tf.gather(tf.constant(JPEG_RATIOS, tf.int32), _ratio_index(encoded, target_size))


def _ratio_index(encoded: tf.Tensor, target_size: tuple[int, int] | None) -> tf.Tensor:
    """Position in ``JPEG_RATIOS`` of :func:`jpeg_decode_ratio`'s ratio."""
    if target_size is None:
        return tf.constant(0, tf.int32)
    height, width = int(target_size[0]), int(target_size[1])

    def largest_fitting():
        shape = tf.image.extract_jpeg_shape(encoded)
        index = tf.constant(0, tf.int32)
        for position, ratio in enumerate(JPEG_RATIOS):
            fits = tf.logical_and(shape[0] >= ratio * height, shape[1] >= ratio * width)
            index = tf.where(fits, tf.constant(position, tf.int32), index)
        return index

    # extract_jpeg_shape fails on other formats: read the header of JPEGs only.
    return tf.cond(tf.io.is_jpeg(encoded), largest_fitting, lambda: tf.constant(0, tf.int32))


def _decode_at_ratio(encoded: tf.Tensor, ratio_index: tf.Tensor, channels: int) -> tf.Tensor:
    """Full decode of any format at ratio 1; a DCT-scaled JPEG decode at 2, 4 or 8.

    ``decode_jpeg`` takes its ratio as a Python int, so each ratio is its own branch.
    Each branch returns ``channels`` channels itself: for RGB the decoders convert grey and
    drop alpha as they decode.  Conditionals nested in these branches kept tf.data from
    decoding two images at once (decoding 480x360 JPEGs took about 1.4x as long).
    """
    def full():
        if channels == 3:
            # The decoders drop alpha and turn grey into RGB themselves.
            return tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
        return _to_channels(tf.io.decode_image(encoded, channels=0, expand_animations=False, dtype=tf.uint8),
                            channels)

    def scaled(ratio):
        if channels == 3:
            return lambda: tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
        # RGB -> grey the same way for every format (libjpeg's own grey output differs by a level).
        return lambda: _to_channels(tf.io.decode_jpeg(encoded, channels=0, ratio=ratio), channels)

    return tf.switch_case(ratio_index, [full] + [scaled(ratio) for ratio in JPEG_RATIOS[1:]])


def _to_channels(image: tf.Tensor, channels: int) -> tf.Tensor:
    """Drop alpha (grey+alpha -> grey, RGBA -> RGB), then grey -> RGB or RGB -> grey as asked."""
    source_channels = tf.shape(image)[-1]
    image = tf.cond(
        tf.logical_or(tf.equal(source_channels, 2), tf.equal(source_channels, 4)),
        lambda: image[..., : source_channels - 1],
        lambda: image,
    )
    if channels == 3:
        return tf.cond(tf.equal(tf.shape(image)[-1], 1), lambda: tf.image.grayscale_to_rgb(image), lambda: image)
    return tf.cond(tf.equal(tf.shape(image)[-1], 3), lambda: tf.image.rgb_to_grayscale(image), lambda: image)


@tf.autograph.experimental.do_not_convert
def decode_image(encoded: tf.Tensor, channels: int, target_size: tuple[int, int] | None = None) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF bytes into a uint8 (height, width, ``channels``) tensor.

    Grey becomes RGB and RGB becomes grey as asked; an alpha channel is dropped;
    an animated GIF gives its first frame.  With ``target_size`` = (height, width), a JPEG
    at least twice that size on both sides is decoded at the smallest scale (1/2, 1/4 or
    1/8) that stays at least ``target_size`` (see :func:`jpeg_decode_ratio`); every other
    image is decoded at full size.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, received: {channels}")
    image = _decode_at_ratio(encoded, _ratio_index(encoded, target_size), channels)
    image.set_shape([None, None, channels])
    return image


def resize_image(image: tf.Tensor, image_size: tuple[int, int], mode: str = "stretch") -> tf.Tensor:
    """Resize a uint8 image (or batch) to ``image_size`` = (height, width); returns uint8.

    ``stretch`` ignores the aspect ratio (like Keras's ``image_dataset_from_directory``),
    ``pad`` keeps it and pads with black, ``crop`` keeps it and crops the centre.
    The result is rounded back to uint8 so it can be cached compactly.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, received: {mode!r}")
    height, width = int(image_size[0]), int(image_size[1])
    pixels = tf.cast(image, tf.float32)
    if mode == "pad":
        resized = _resize_with_pad(pixels, height, width)
    elif mode == "crop":
        resized = _resize(_crop_to_aspect(pixels, height, width), height, width)
    else:
        resized = _resize(pixels, height, width)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _resize(pixels: tf.Tensor, height, width) -> tf.Tensor:
    """Area averaging when shrinking (antialiased, ~4x cheaper than antialiased bilinear),
    antialiased bilinear when enlarging."""
    shape = tf.shape(pixels)
    shrinking = tf.logical_and(shape[-3] >= height, shape[-2] >= width)
    size = tf.stack([height, width])
    return tf.cond(
        shrinking,
        lambda: tf.image.resize(pixels, size, method="area"),
        lambda: tf.image.resize(pixels, size, antialias=True),
    )


def _resize_with_pad(pixels: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Fit inside (height, width) keeping the aspect ratio, then pad with black, centred.

    The fitted size is computed with float32 tensor ops, so eager code, tf.data and the
    exported graph all get the same size (``tf.image.resize_with_pad`` does not).
    """
    shape = tf.shape(pixels)
    source_height = tf.cast(shape[-3], tf.float32)
    source_width = tf.cast(shape[-2], tf.float32)
    scale = tf.minimum(height / source_height, width / source_width)
    fitted_height = tf.clip_by_value(tf.cast(tf.round(source_height * scale), tf.int32), 1, height)
    fitted_width = tf.clip_by_value(tf.cast(tf.round(source_width * scale), tf.int32), 1, width)
    fitted = _resize(pixels, fitted_height, fitted_width)
    return tf.image.pad_to_bounding_box(fitted, (height - fitted_height) // 2, (width - fitted_width) // 2,
                                        height, width)


def _crop_to_aspect(pixels: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Centre-crop ``pixels`` (last three axes H, W, C) to the aspect ratio height:width."""
    shape = tf.shape(pixels)
    source_height = tf.cast(shape[-3], tf.float32)
    source_width = tf.cast(shape[-2], tf.float32)
    target_ratio = width / height
    crop_width = tf.minimum(source_width, source_height * target_ratio)
    crop_height = tf.minimum(source_height, source_width / target_ratio)
    crop_height_int = tf.maximum(tf.cast(crop_height, tf.int32), 1)
    crop_width_int = tf.maximum(tf.cast(crop_width, tf.int32), 1)
    offset_height = (shape[-3] - crop_height_int) // 2
    offset_width = (shape[-2] - crop_width_int) // 2
    return tf.image.crop_to_bounding_box(pixels, offset_height, offset_width, crop_height_int, crop_width_int)


# Plain TensorFlow ops without Python control flow on tensors: skipping AutoGraph's
# conversion about halves the tracing every new tf.data pipeline and export pays.
@tf.autograph.experimental.do_not_convert
def load_image(encoded: tf.Tensor, image_size: tuple[int, int], channels: int, mode: str = "stretch") -> tf.Tensor:
    """Decode (a large JPEG at a reduced DCT scale) and resize: encoded bytes -> uint8 (height, width, channels)."""
    image = resize_image(decode_image(encoded, channels, target_size=image_size), image_size, mode)
    image.set_shape([int(image_size[0]), int(image_size[1]), channels])
    return image
