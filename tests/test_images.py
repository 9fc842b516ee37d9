"""Decoding and resizing (keras_cnn.data.images): DCT-scaled JPEG decoding of large images.

A JPEG at least twice the model's input on both sides is decoded at 1/2, 1/4 or 1/8 scale;
the training pipeline, the bad-image check and the exported serving graph all decode the
same way, so they must all produce the same pixels.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip("tensorflow")

from keras_cnn.data.files import find_bad_images  # noqa: E402
from keras_cnn.data.images import decode_image, jpeg_decode_ratio, load_image, resize_image  # noqa: E402
from keras_cnn.data.pipeline import make_dataset  # noqa: E402


def photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth gradient with some noise: compresses like a photo, not like pure noise."""
    generator = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    smooth = np.stack([255 * y / height, 255 * x / width, 128 + 100 * np.sin(x / 17.0 + y / 23.0)], axis=-1)
    return np.clip(smooth + generator.normal(0, 12, smooth.shape), 0, 255).astype(np.uint8)


def encode(array: np.ndarray, image_format: str = "JPEG") -> bytes:
    return pil_encode(Image.fromarray(array), image_format)


def pil_encode(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, image_format, **({"quality": 90} if image_format == "JPEG" else {}))
    return buffer.getvalue()


def full_decode(data: bytes, channels: int = 3) -> np.ndarray:
    """What kcnn decoded before DCT scaling: the whole image."""
    return decode_image(tf.constant(data), channels).numpy()


@pytest.mark.parametrize("height, width, target, ratio", [
    (150, 200, (28, 28), 4),     # a photo to 224 scaled by 8: 150 / 28 = 5.4, 1/4 keeps 38 x 50
    (225, 250, (28, 28), 8),     # both sides >= 8 x 28
    (45, 60, (28, 28), 1),       # less than twice the target: full decode
    (62, 37, (28, 28), 1),       # one side too small
    (75, 200, (28, 28), 2),      # the smaller side decides
    (150, 200, (28, 40), 4),     # height and width are checked separately
    (150, 200, (28, 60), 2),
])
def test_ratio_is_the_largest_that_stays_at_or_above_the_target(height, width, target, ratio):
    data = encode(photo(height, width))
    assert int(jpeg_decode_ratio(tf.constant(data), target)) == ratio
    decoded = decode_image(tf.constant(data), 3, target_size=target).numpy()
    assert decoded.shape == (-(-height // ratio), -(-width // ratio), 3)
    assert decoded.shape[0] >= target[0] and decoded.shape[1] >= target[1]


def test_small_jpegs_and_other_formats_decode_exactly_as_before():
    image = photo(150, 200)
    assert int(jpeg_decode_ratio(tf.constant(encode(image, "PNG")), (32, 32))) == 1
    assert int(jpeg_decode_ratio(tf.constant(encode(photo(100, 140))), (64, 64))) == 1
    for data, target in ((encode(image, "PNG"), (32, 32)), (encode(image, "BMP"), (16, 16)),
                         (encode(photo(100, 140)), (64, 64)), (encode(photo(100, 140)), None)):
        np.testing.assert_array_equal(decode_image(tf.constant(data), 3, target_size=target).numpy(),
                                      full_decode(data))
    grey = encode(photo(256, 256)[..., 0], "JPEG")
    assert decode_image(tf.constant(grey), 3, target_size=(32, 32)).numpy().shape == (32, 32, 3)
    assert decode_image(tf.constant(grey), 1, target_size=(32, 32)).numpy().shape == (32, 32, 1)


@pytest.mark.parametrize("mode, image_format", [
    ("RGB", "JPEG"), ("L", "JPEG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("L", "PNG"),
    ("P", "PNG"), ("RGB", "BMP"), ("P", "GIF"),
])
@pytest.mark.parametrize("target", [None, (24, 24)])
def test_every_format_gives_the_channels_asked_with_alpha_dropped(mode, image_format, target):
    """Each decode branch converts channels itself (RGB requests go straight to the decoders);
    the result must equal decoding the file's own channels, dropping alpha, then converting."""
    data = tf.constant(pil_encode(Image.fromarray(photo(120, 160)).convert(mode), image_format))
    own = tf.io.decode_image(data, channels=0, expand_animations=False)
    colour = own[..., :-1] if own.shape[-1] in (2, 4) else own
    expected = {3: colour if colour.shape[-1] == 3 else tf.image.grayscale_to_rgb(colour),
                1: colour if colour.shape[-1] == 1 else tf.image.rgb_to_grayscale(colour)}
    for channels in (3, 1):
        decoded = decode_image(data, channels, target_size=target).numpy()
        if target is None or image_format != "JPEG":
            np.testing.assert_array_equal(decoded, expected[channels].numpy())
        else:  # a JPEG 5x the target: decoded at 1/4 scale, same channels
            assert decoded.shape == (30, 40, channels)


@pytest.mark.parametrize("mode", ["stretch", "pad", "crop"])
def test_scaled_decode_is_close_to_full_decode_and_resize(mode):
    data = encode(photo(480, 640))
    target = (48, 56)   # ratio 8
    assert int(jpeg_decode_ratio(tf.constant(data), target)) == 8
    scaled = load_image(tf.constant(data), target, 3, mode).numpy().astype(np.float32)
    full = resize_image(full_decode(data), target, mode).numpy().astype(np.float32)
    assert scaled.shape == full.shape == (*target, 3)
    difference = np.abs(scaled - full)
    # DCT scaling averages 8x8 blocks as the area resize does: off by about a grey level.
    assert difference.mean() < 2.0, difference.mean()
    assert not np.array_equal(scaled, full)   # the scaled path did run


def test_training_pipeline_and_serving_graph_decode_the_same_pixels(tmp_path):
    """tf.data (training), an eager call and a reloaded SavedModel function agree pixel for pixel."""
    images = tmp_path / "images"
    images.mkdir()
    datas = [encode(photo(360, 480, seed)) for seed in range(2)] + [encode(photo(90, 70, 5), "PNG")]
    rows = []
    for index, data in enumerate(datas):
        name = f"{hashlib.sha1(data).hexdigest()}.{'png' if index == 2 else 'jpg'}"
        (images / name).write_bytes(data)
        rows.append(f"{name},{'ab'[index % 2]},test")
    split = tmp_path / "split.csv"
    split.write_text("objectId,value,type\n" + "\n".join(rows) + "\n")
    size = (40, 32)
    training = np.concatenate([batch.numpy() for batch, _ in
                               make_dataset(split, images, "test", size, batch_size=2, cache=False)])

    class Serving(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def decode(self, encoded):
            return tf.map_fn(lambda one: load_image(one, size, 3, "stretch"), encoded,
                             fn_output_signature=tf.TensorSpec([*size, 3], tf.uint8))

    tf.saved_model.save(Serving(), str(tmp_path / "serving"))
    served = tf.saved_model.load(str(tmp_path / "serving")).decode(tf.constant(datas)).numpy()
    eager = np.stack([load_image(tf.constant(data), size, 3).numpy() for data in datas])
    np.testing.assert_array_equal(training, served.astype(np.float32))
    np.testing.assert_array_equal(eager, served)
    assert int(jpeg_decode_ratio(tf.constant(datas[0]), size)) == 8


def test_bad_image_check_still_finds_a_truncated_large_jpeg(tmp_path):
    data = encode(photo(320, 400))
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "whole.jpg").write_bytes(data)
    (folder / "cut.jpg").write_bytes(data[: len(data) * 2 // 3])
    (folder / "tail.jpg").write_bytes(data[:-200])
    assert find_bad_images(folder, ["whole.jpg", "cut.jpg", "tail.jpg"], progress=False) == [
        ("cut.jpg", "truncated or corrupt JPEG"), ("tail.jpg", "truncated or corrupt JPEG")]


# --------------------------------------------------------------------------- resize filters and headers


def area_as_runs_had_it(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The resize of kcnn's earlier runs: a float copy, area when shrinking, antialiased bilinear
    otherwise, rounded and clipped."""
    pixels = tf.cast(image, tf.float32)
    shrinking = image.shape[0] >= size[0] and image.shape[1] >= size[1]
    resized = tf.image.resize(pixels, size, **({"method": "area"} if shrinking else {"antialias": True}))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8).numpy()


@pytest.mark.parametrize("source, size", [((150, 200), (48, 56)), ((90, 70), (40, 32)), ((30, 40), (64, 48)),
                                          ((57, 41), (57, 80))])
def test_the_resize_gives_the_pixels_earlier_runs_had(source, size):
    """Earlier runs (and their caches, their exports) keep their pixels, shrinking or enlarging, now
    that the kernels read the uint8 pixels themselves and the decode chooses the step."""
    image = photo(*source, seed=3)
    np.testing.assert_array_equal(resize_image(image, size).numpy(), area_as_runs_had_it(image, size))


def test_area_averages_and_does_not_alias():
    """Stripes finer than the output grid come out as their mean (grey), as averaging every input
    pixel gives; point sampling turns them into bands of black and white."""
    size = (24, 32)
    stripes = np.zeros((size[0] * 3, size[1] * 3, 3), np.uint8)
    stripes[:, ::2] = 255
    resized = resize_image(stripes, size).numpy().astype(np.float32)
    assert abs(resized.mean() - 127.5) < 8 and resized.std() < 50, resized.std()
    assert tf.image.resize(stripes, size, method="nearest").numpy().astype(np.float32).std() > 100


@pytest.mark.parametrize("mode, image_format, options", [
    ("RGB", "JPEG", {}), ("L", "JPEG", {}), ("RGB", "PNG", {}), ("P", "GIF", {}), ("RGB", "BMP", {}),
    ("RGB", "WEBP", {"lossless": True}), ("RGB", "WEBP", {"quality": 80}), ("RGBA", "WEBP", {"quality": 80}),
])
def test_header_pixels_reads_every_format_without_decoding(mode, image_format, options):
    from keras_cnn.data.images import header_pixels

    buffer = io.BytesIO()
    Image.fromarray(photo(37, 53)).convert(mode).save(buffer, image_format, **options)
    assert int(header_pixels(tf.constant(buffer.getvalue()))) == 37 * 53
    assert int(header_pixels(tf.constant(b"neither an image nor a header"))) == -1
