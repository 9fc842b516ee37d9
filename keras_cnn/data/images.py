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


# The first bytes of a file, enough for the size fields of every header header_pixels reads.
_HEADER_BYTES = 32

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


@tf.autograph.experimental.do_not_convert
def header_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """Width x height (int64) of an encoded image, from its header alone; -1 when the format is not known.

    Reads the size fields of the formats ``decode_image`` decodes: JPEG (its frame header),
    PNG (IHDR), GIF (the logical screen), BMP and WebP (VP8, VP8L, VP8X), so an image too
    large to decode safely is found before any memory goes to its pixels.  A damaged JPEG
    header fails, as its decode would.
    """
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, _HEADER_BYTES),
                                              tf.constant(b"\0" * _HEADER_BYTES)]), 0, _HEADER_BYTES)
    values = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)

    def little_endian(start: int, count: int) -> tf.Tensor:
        return sum(values[start + index] * (256 ** index) for index in range(count))

    def big_endian(start: int, count: int) -> tf.Tensor:
        return sum(values[start + index] * (256 ** (count - 1 - index)) for index in range(count))

    def signed_32(value: tf.Tensor) -> tf.Tensor:
        return tf.abs(tf.where(value >= 2**31, value - 2**32, value))   # a top-down BMP has a negative height

    def starts(prefix: bytes, at: int = 0) -> tf.Tensor:
        return tf.equal(tf.strings.substr(head, at, len(prefix)), prefix)

    lossless_bits = little_endian(21, 4)
    known = [
        (starts(b"\x89PNG\r\n\x1a\n"), big_endian(16, 4) * big_endian(20, 4)),
        (starts(b"GIF8"), little_endian(6, 2) * little_endian(8, 2)),
        (starts(b"BM"), signed_32(little_endian(18, 4)) * signed_32(little_endian(22, 4))),
        (starts(b"RIFF") & starts(b"WEBPVP8 ", 8),
         tf.bitwise.bitwise_and(little_endian(26, 2), 0x3FFF) * tf.bitwise.bitwise_and(little_endian(28, 2), 0x3FFF)),
        (starts(b"RIFF") & starts(b"WEBPVP8L", 8),
         (tf.bitwise.bitwise_and(lossless_bits, 0x3FFF) + 1)
         * (tf.bitwise.bitwise_and(tf.bitwise.right_shift(lossless_bits, 14), 0x3FFF) + 1)),
        (starts(b"RIFF") & starts(b"WEBPVP8X", 8), (little_endian(24, 3) + 1) * (little_endian(27, 3) + 1)),
    ]
    pixels = tf.constant(-1, tf.int64)
    for matches, size in reversed(known):
        pixels = tf.where(matches, size, pixels)
    return tf.cond(tf.io.is_jpeg(encoded),
                   lambda: tf.reduce_prod(tf.cast(tf.image.extract_jpeg_shape(encoded)[:2], tf.int64)),
                   lambda: pixels)


def within_pixel_limit(encoded: tf.Tensor, limit: int) -> tf.Tensor:
    """``encoded`` itself, once its header says it has at most ``limit`` pixels; an error before any decoding if not.

    The pipelines' guard: the images of a run were checked before training (and
    ``kcnn evaluate`` checks the part it reads), so this only stops a file put there since.
    """
    check = tf.debugging.assert_less_equal(header_pixels(encoded), tf.constant(int(limit), tf.int64),
                                           message=f"an image is over the limit of {int(limit):,} pixels "
                                                   "(--max-image-pixels)")
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


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
