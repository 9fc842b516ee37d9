"""Decode and resize one image with TensorFlow ops.

The training pipeline and the exported SavedModel both call :func:`load_image`, so an
exported model sees exactly the pixels the model was trained on.  Every kcnn model takes
float32 pixels in 0..255 of shape (height, width, channels); the scaling its weights
expect lives inside the model.

A JPEG much larger than the model's input is decoded at 1/2, 1/4 or 1/8 scale in the DCT
domain (libjpeg's scaled decoding) before the resize: most of a photo's pixels would be
averaged away by the resize anyway, and skipping them makes decoding several times faster.

Images are shrunk by area averaging (each output pixel the mean of the input it covers, an
antialiased resize) and enlarged by antialiased bilinear interpolation; the kernels read the
uint8 pixels directly, rounding once at the end.  Where DCT scaling cannot help (a 480x360
JPEG to 224x224) the area resize costs about as much CPU time as the decode itself;
``benchmarks/pipeline.py --breakdown`` shows where the time goes.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_cnn.choices import ResizeMode, names

RESIZE_MODES = names(ResizeMode)
# How load_image shrinks images, as kcnn.json records it (predict decodes an export's images
# itself only when the export records this).
RESIZE_FILTER = "area"

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
    if target_size is None:
        return tf.constant(1, tf.int32)
    is_jpeg, size = _header(encoded)
    return tf.gather(tf.constant(JPEG_RATIOS, tf.int32), _ratio_index(is_jpeg, size, target_size))


def _ratio_index(is_jpeg: tf.Tensor, size: tf.Tensor, target_size: tuple[int, int] | None) -> tf.Tensor:
    """Position in ``JPEG_RATIOS`` of :func:`jpeg_decode_ratio`'s ratio, from the header's (height, width)."""
    if target_size is None:
        return tf.constant(0, tf.int32)
    # Fitting is monotone in the ratio (fits at 4: fits at 2 and 1), so the count of fitting
    # ratios less one is the position of the largest; a JPEG under the target counts none.
    ratios = tf.constant(JPEG_RATIOS, tf.int64)
    fits = tf.logical_and(size[0] >= ratios * int(target_size[0]), size[1] >= ratios * int(target_size[1]))
    index = tf.maximum(tf.reduce_sum(tf.cast(fits, tf.int32)) - 1, 0)
    return tf.where(is_jpeg, index, tf.constant(0, tf.int32))


def _header_table() -> dict[str, np.ndarray]:
    """The size fields of the formats other than JPEG, as arrays one vectorised read takes.

    Each format is a row: the bytes that identify it (``pattern`` where ``checked``), and
    its width and height, each a little- or big-endian integer of up to 4 bytes
    (``positions`` x ``weights``), then ``>> shift``, ``& mask``, ``+ add``; ``signed``:
    a 32-bit value whose sign is dropped (a top-down BMP has a negative height).
    """
    fixed = {"little": lambda start, count: [(start + index, 256 ** index) for index in range(count)],
             "big": lambda start, count: [(start + index, 256 ** (count - 1 - index)) for index in range(count)]}
    everything = (1 << 40) - 1
    # name: (signature parts, (width field, height field)), a field = (endian, start, count, shift, mask, add)
    formats = {
        "png": ([(0, b"\x89PNG\r\n\x1a\n")], (("big", 16, 4, 0, everything, 0), ("big", 20, 4, 0, everything, 0))),
        "gif": ([(0, b"GIF8")], (("little", 6, 2, 0, everything, 0), ("little", 8, 2, 0, everything, 0))),
        "bmp": ([(0, b"BM")], (("little", 18, 4, 0, everything, 0), ("little", 22, 4, 0, everything, 0))),
        "webp-lossy": ([(0, b"RIFF"), (8, b"WEBPVP8 ")],
                       (("little", 26, 2, 0, 0x3FFF, 0), ("little", 28, 2, 0, 0x3FFF, 0))),
        "webp-lossless": ([(0, b"RIFF"), (8, b"WEBPVP8L")],
                          (("little", 21, 4, 0, 0x3FFF, 1), ("little", 21, 4, 14, 0x3FFF, 1))),
        "webp-extended": ([(0, b"RIFF"), (8, b"WEBPVP8X")],
                          (("little", 24, 3, 0, everything, 1), ("little", 27, 3, 0, everything, 1))),
    }
    count = len(formats)
    table = {"pattern": np.zeros((count, _HEADER_BYTES), np.int64), "checked": np.zeros((count, _HEADER_BYTES), bool),
             "positions": np.zeros((count, 2, 4), np.int64), "weights": np.zeros((count, 2, 4), np.int64),
             "shift": np.zeros((count, 2), np.int64), "mask": np.zeros((count, 2), np.int64),
             "add": np.zeros((count, 2), np.int64), "signed": np.zeros((count, 1), bool)}
    for row, (name, (signature, fields)) in enumerate(formats.items()):
        for start, text in signature:
            table["pattern"][row, start:start + len(text)] = list(text)
            table["checked"][row, start:start + len(text)] = True
        for column, (endian, start, length, shift, mask, add) in enumerate(fields):
            for slot, (position, weight) in enumerate(fixed[endian](start, length)):
                table["positions"][row, column, slot] = position
                table["weights"][row, column, slot] = weight
            table["shift"][row, column], table["mask"][row, column], table["add"][row, column] = shift, mask, add
        table["signed"][row] = name == "bmp"
    return table


_HEADERS = _header_table()


def _other_format_size(encoded: tf.Tensor) -> tf.Tensor:
    """(height, width) int64 of a PNG, GIF, BMP or WebP from its first bytes; (-1, -1) for any other data.

    One gather and a few element-wise ops for every format at once: reading the fields
    format by format took hundreds of tiny ops, as long as half a JPEG's decode.
    """
    head = tf.strings.substr(tf.strings.join([tf.strings.substr(encoded, 0, _HEADER_BYTES),
                                              tf.constant(b"\0" * _HEADER_BYTES)]), 0, _HEADER_BYTES)
    values = tf.cast(tf.io.decode_raw(head, tf.uint8), tf.int64)
    matches = tf.reduce_all(tf.logical_or(tf.equal(values, _HEADERS["pattern"]), ~_HEADERS["checked"]), axis=1)
    raw = tf.reduce_sum(tf.gather(values, _HEADERS["positions"]) * _HEADERS["weights"], axis=-1)
    raw = tf.where(tf.logical_and(_HEADERS["signed"], raw >= 2**31), 2**32 - raw, raw)
    sides = tf.bitwise.bitwise_and(tf.bitwise.right_shift(raw, _HEADERS["shift"]), _HEADERS["mask"]) + _HEADERS["add"]
    width_height = tf.reduce_max(tf.where(matches[:, None], sides, tf.constant(-1, tf.int64)), axis=0)
    return tf.reverse(width_height, [0])


# The least extract_jpeg_shape reads: the SOI, SOF0 (1x1, one component) and SOS markers of a JPEG.
# It reads this in place of data that is not a JPEG, so every format takes one path: a
# conditional per image cost about as much as reading every format's header at once.
_STAND_IN_JPEG = (b"\xff\xd8" + b"\xff\xc0\x00\x0b\x08\x00\x01\x00\x01\x01\x01\x11\x00"
                  + b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00")


def _header(encoded: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(is it a JPEG, its (height, width) as int64 from the header alone: (-1, -1) when the format is unknown).

    A damaged JPEG header fails, as its decode would.
    """
    is_jpeg = tf.io.is_jpeg(encoded)
    jpeg_size = tf.image.extract_jpeg_shape(tf.where(is_jpeg, encoded, tf.constant(_STAND_IN_JPEG)))[:2]
    return is_jpeg, tf.where(is_jpeg, tf.cast(jpeg_size, tf.int64), _other_format_size(encoded))


def _pixels_of(size: tf.Tensor) -> tf.Tensor:
    return tf.where(tf.reduce_any(size < 0), tf.constant(-1, tf.int64), tf.reduce_prod(size))


@tf.autograph.experimental.do_not_convert
def header_pixels(encoded: tf.Tensor) -> tf.Tensor:
    """Width x height (int64) of an encoded image, from its header alone; -1 when the format is not known.

    Reads the size fields of the formats ``decode_image`` decodes: JPEG (its frame header),
    PNG (IHDR), GIF (the logical screen), BMP and WebP (VP8, VP8L, VP8X), so an image too
    large to decode safely is found before any memory goes to its pixels.  A damaged JPEG
    header fails, as its decode would.
    """
    return _pixels_of(_header(encoded)[1])


def _checked_pixel_limit(encoded: tf.Tensor, size: tf.Tensor, limit: int) -> tf.Tensor:
    check = tf.debugging.assert_less_equal(_pixels_of(size), tf.constant(int(limit), tf.int64),
                                           message=f"an image is over the limit of {int(limit):,} pixels "
                                                   "(--max-image-pixels)")
    with tf.control_dependencies([check]):
        return tf.identity(encoded)


def within_pixel_limit(encoded: tf.Tensor, limit: int) -> tf.Tensor:
    """``encoded`` itself, once its header says it has at most ``limit`` pixels; an error before any decoding if not.

    The pipelines' guard: the images of a run were checked before training (and
    ``kcnn evaluate`` checks the part it reads), so this only stops a file put there since.
    """
    return _checked_pixel_limit(encoded, _header(encoded)[1], limit)


def _decode_at_ratio(encoded: tf.Tensor, ratio_index: tf.Tensor, channels: int) -> tf.Tensor:
    """Full decode of any format at ratio 1; a DCT-scaled JPEG decode at 2, 4 or 8."""
    return tf.switch_case(ratio_index, _decoders(encoded, channels))


def _decoders(encoded: tf.Tensor, channels: int) -> list:
    """One decode function per ratio of ``JPEG_RATIOS``: any format at 1, a DCT-scaled JPEG beyond.

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

    return [full] + [scaled(ratio) for ratio in JPEG_RATIOS[1:]]


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
def decode_image(encoded: tf.Tensor, channels: int, target_size: tuple[int, int] | None = None,
                 max_pixels: int | None = None) -> tf.Tensor:
    """Decode JPEG/PNG/BMP/GIF bytes into a uint8 (height, width, ``channels``) tensor.

    Grey becomes RGB and RGB becomes grey as asked; an alpha channel is dropped;
    an animated GIF gives its first frame.  With ``target_size`` = (height, width), a JPEG
    at least twice that size on both sides is decoded at the smallest scale (1/2, 1/4 or
    1/8) that stays at least ``target_size`` (see :func:`jpeg_decode_ratio`); every other
    image is decoded at full size.  ``max_pixels``: an image whose header says it is
    larger is an error before anything is decoded (:func:`within_pixel_limit`; the header
    is read once for both).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, received: {channels}")
    if target_size is None and not max_pixels:
        ratio_index = tf.constant(0, tf.int32)
    else:
        is_jpeg, size = _header(encoded)
        if max_pixels:
            encoded = _checked_pixel_limit(encoded, size, max_pixels)
        ratio_index = _ratio_index(is_jpeg, size, target_size)
    image = _decode_at_ratio(encoded, ratio_index, channels)
    image.set_shape([None, None, channels])
    return image


def resize_image(image: tf.Tensor, image_size: tuple[int, int], mode: str = "stretch") -> tf.Tensor:
    """Resize a uint8 image (or batch) to ``image_size`` = (height, width); returns uint8.

    ``stretch`` ignores the aspect ratio (like Keras's ``image_dataset_from_directory``),
    ``pad`` keeps it and pads with black, ``crop`` keeps it and crops the centre.
    Shrinking averages areas, enlarging (on either side) is antialiased bilinear.  The result
    is rounded back to uint8 so it can be cached compactly (both average pixels with weights
    that sum to 1: nothing falls outside 0..255).
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, received: {mode!r}")
    image = tf.convert_to_tensor(image)
    target = (int(image_size[0]), int(image_size[1]))
    enlarging = _enlarging(tf.shape(image)[-3:-1], target, mode)
    return _fit(image, target, mode, lambda pixels, size: tf.cond(
        enlarging, lambda: _antialiased_bilinear(pixels, size), lambda: _area(pixels, size)))


def _fit(image: tf.Tensor, target: tuple[int, int], mode: str, resize) -> tf.Tensor:
    """``image`` cropped (crop), resized by ``resize(pixels, size)`` (float32) and padded (pad) to
    ``target``, rounded to uint8."""
    height, width = target
    if mode == "crop":
        resized = resize(_crop_to_aspect(image, height, width), tf.constant([height, width]))
    elif mode == "pad":
        fitted = _fitted_size(tf.shape(image)[-3:-1], target, mode)
        resized = tf.image.pad_to_bounding_box(resize(image, fitted), (height - fitted[0]) // 2,
                                               (width - fitted[1]) // 2, height, width)
    else:
        resized = resize(image, tf.constant([height, width]))
    return tf.cast(tf.round(resized), tf.uint8)


def _fitted_size(source: tf.Tensor, target: tuple[int, int], mode: str) -> tf.Tensor:
    """(height, width) int32 the resize itself produces from an image of ``source`` size: the target,
    or in ``pad`` mode the size that fits inside it keeping the aspect ratio.  Computed with float32
    tensor ops, so eager code, tf.data and the exported graph all get the same size
    (``tf.image.resize_with_pad`` does not)."""
    height, width = target
    if mode != "pad":
        return tf.constant([height, width])
    source = tf.cast(source, tf.float32)
    scale = tf.minimum(height / source[0], width / source[1])
    return tf.stack([tf.clip_by_value(tf.cast(tf.round(source[0] * scale), tf.int32), 1, height),
                     tf.clip_by_value(tf.cast(tf.round(source[1] * scale), tf.int32), 1, width)])


def _enlarging(source: tf.Tensor, target: tuple[int, int], mode: str) -> tf.Tensor:
    """Whether an image of ``source`` (height, width) is enlarged on either side by ``_fit``: what it
    resizes (the centre crop in ``crop`` mode) is smaller than what it resizes to."""
    resized = _crop_size(tf.cast(source, tf.float32), *target) if mode == "crop" else tf.cast(source, tf.int32)
    return tf.reduce_any(resized < _fitted_size(source, target, mode))


def _batched(resize):
    """``resize`` of one image [H, W, C] or a batch [B, H, W, C], for kernels that take batches."""
    def resize_any(image, size):
        if image.shape.rank == 4:
            return resize(image, size)
        return resize(image[None], size)[0]
    return resize_any


@_batched
def _area(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    # The kernel reads uint8 itself: no float copy of the full image, the result it gives on one.
    return tf.raw_ops.ResizeArea(images=image, size=size)


@_batched
def _antialiased_bilinear(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    return tf.image.resize(image, size, antialias=True)


def _crop_size(source: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """(height, width) int32 of the centre crop of an image of ``source`` (float32) size to height:width."""
    target_ratio = width / height
    crop_width = tf.minimum(source[1], source[0] * target_ratio)
    crop_height = tf.minimum(source[0], source[1] / target_ratio)
    return tf.maximum(tf.cast(tf.stack([crop_height, crop_width]), tf.int32), 1)


def _crop_to_aspect(pixels: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """Centre-crop ``pixels`` (last three axes H, W, C) to the aspect ratio height:width."""
    shape = tf.shape(pixels)
    crop = _crop_size(tf.cast(shape[-3:-1], tf.float32), height, width)
    offset = (shape[-3:-1] - crop) // 2
    return tf.image.crop_to_bounding_box(pixels, offset[0], offset[1], crop[0], crop[1])


# Plain TensorFlow ops without Python control flow on tensors: skipping AutoGraph's
# conversion about halves the tracing every new tf.data pipeline and export pays.
@tf.autograph.experimental.do_not_convert
def load_image(encoded: tf.Tensor, image_size: tuple[int, int], channels: int, mode: str = "stretch",
               max_pixels: int | None = None) -> tf.Tensor:
    """Decode (a large JPEG at a reduced DCT scale) and resize: encoded bytes -> uint8 (height, width, channels).

    The pixels of ``resize_image(decode_image(encoded, channels, image_size), image_size, mode)``
    with a single conditional, the decode's, whose branches hold nothing else: in tf.data a resize
    inside a conditional branch ran about a third slower, so the area resize of every shrunk
    image runs outside it.  The header says the decoded size beforehand, so an image to enlarge
    (rare) takes a branch of its own that decodes and resizes it; the area resize that follows
    leaves an image already at its size as it is.  ``max_pixels``: refuse an image over that
    many pixels before decoding it (see :func:`decode_image`).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, received: {channels}")
    if mode not in RESIZE_MODES:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES}, received: {mode!r}")
    target = (int(image_size[0]), int(image_size[1]))
    is_jpeg, size = _header(encoded)
    if max_pixels:
        encoded = _checked_pixel_limit(encoded, size, max_pixels)
    ratio_index = _ratio_index(is_jpeg, size, target)
    decoders = _decoders(encoded, channels)

    def enlarged():
        # Only a full decode can be smaller than the target: a DCT-scaled one is at least its size.
        return _fit(decoders[0](), target, mode, _antialiased_bilinear)

    enlarging = tf.logical_and(tf.equal(ratio_index, 0), _enlarging(size, target, mode))
    image = tf.switch_case(tf.where(enlarging, len(decoders), ratio_index), [*decoders, enlarged])
    image.set_shape([None, None, channels])
    image = _fit(image, target, mode, _area)
    image.set_shape([target[0], target[1], channels])
    return image
