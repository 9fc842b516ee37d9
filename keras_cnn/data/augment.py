"""Random augmentation: ImageDataGenerator-style ranges -> Keras preprocessing layers.

An :class:`AugmentationSpec` holds the ranges users know from Keras 2's
``ImageDataGenerator`` (rotation in degrees, shifts and zoom as fractions, flips,
brightness, contrast).  :func:`build_augmentation_layers` turns it into Keras 3 random
preprocessing layers and :func:`augment_dataset` applies them inside the ``tf.data``
pipeline, on batches, after the decoded images were cached.  Keeping augmentation out of
the model keeps the model a plain stack that XLA can compile on a GPU, and keeps exported
models free of training-only layers.

The layers take float32 pixels in 0..255 (the kcnn model contract) and return the same.
:func:`legacy_image_data_generator` builds the old ``ImageDataGenerator`` with the same
ranges, for comparison runs and benchmarks.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keras_cnn.errors import UserError

FILL_MODES = ("nearest", "constant", "reflect", "wrap")


@dataclass(frozen=True)
class AugmentationSpec:
    """Ranges of the random transformations, in ImageDataGenerator's units.

    ``rotation_range``: degrees, a rotation is drawn from [-r, r].
    ``width_shift_range`` / ``height_shift_range``: fractions of the width / height.
    ``zoom_range``: z draws the height and width zoom independently from [1 - z, 1 + z].
    ``horizontal_flip`` / ``vertical_flip``: flip half of the images.
    ``brightness_range``: b shifts brightness by up to +-b x 255 (Keras's ``RandomBrightness``
    is additive; ImageDataGenerator's ``(1 - b, 1 + b)`` is multiplicative: close, not equal).
    ``contrast_range``: c scales contrast around the mean by a factor in [1 - c, 1 + c].
    ``fill_mode``: how pixels shifted in from outside are filled (nearest, constant,
    reflect, wrap), as in ImageDataGenerator.
    """

    rotation_range: float = 0.0
    width_shift_range: float = 0.0
    height_shift_range: float = 0.0
    zoom_range: float = 0.0
    horizontal_flip: bool = False
    vertical_flip: bool = False
    brightness_range: float = 0.0
    contrast_range: float = 0.0
    fill_mode: str = "nearest"

    def __post_init__(self):
        for name in ("rotation_range", "width_shift_range", "height_shift_range",
                     "zoom_range", "brightness_range", "contrast_range"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"augmentation {name} must be a number, received: {value!r}")
            if value < 0:
                raise UserError(f"augmentation {name} must be >= 0, received: {value!r}")
        for name in ("width_shift_range", "height_shift_range", "zoom_range",
                     "brightness_range", "contrast_range"):
            if getattr(self, name) >= 1:
                raise UserError(f"augmentation {name} is a fraction and must be < 1, "
                                f"received: {getattr(self, name)!r}")
        if self.rotation_range > 180:
            raise UserError(f"augmentation rotation_range is in degrees and must be <= 180, "
                            f"received: {self.rotation_range!r}")
        if self.fill_mode not in FILL_MODES:
            raise UserError(f"augmentation fill_mode must be one of {FILL_MODES}, "
                            f"received: {self.fill_mode!r}")

    @property
    def is_identity(self) -> bool:
        """True when no transformation would change an image."""
        return not (self.rotation_range or self.width_shift_range or self.height_shift_range
                    or self.zoom_range or self.horizontal_flip or self.vertical_flip
                    or self.brightness_range or self.contrast_range)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (what ``config.json`` stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> AugmentationSpec:
        """Build from a dict of ranges; unknown keys are a ``UserError``.

        ImageDataGenerator's pair forms are accepted where they are symmetric:
        ``zoom_range=[0.9, 1.1]`` means 0.1 and ``brightness_range=[0.8, 1.2]`` means 0.2.
        """
        values = dict(values or {})
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown augmentation option(s) {', '.join(unknown)}; "
                            f"known: {', '.join(sorted(known))}")
        for name in ("zoom_range", "brightness_range"):
            if name in values and isinstance(values[name], (list, tuple)):
                values[name] = _symmetric_pair_to_range(name, values[name])
        for name in ("horizontal_flip", "vertical_flip"):
            if name in values and not isinstance(values[name], bool):
                raise UserError(f"augmentation {name} must be true or false, received: {values[name]!r}")
        return cls(**values)


def _symmetric_pair_to_range(name: str, pair) -> float:
    """``[1 - r, 1 + r]`` -> r; any other pair cannot be expressed by the layers."""
    try:
        low, high = (float(value) for value in pair)
    except (TypeError, ValueError):
        raise UserError(f"augmentation {name} must be a number or a [low, high] pair, "
                        f"received: {pair!r}") from None
    if not math.isclose(1.0 - low, high - 1.0, abs_tol=1e-9):
        raise UserError(f"augmentation {name} pair must be symmetric around 1 (e.g. [0.9, 1.1]), "
                        f"received: {list(pair)!r}")
    return high - 1.0


# The Keras book's augmented CIFAR-10 deep net: shifts of 10 %, horizontal flips, no
# rotation or zoom, borders filled with the nearest pixel.
REFERENCE_CIFAR10_AUGMENTATION = AugmentationSpec(
    width_shift_range=0.1, height_shift_range=0.1, horizontal_flip=True, fill_mode="nearest",
)

# A mild default for photos when --augment is given without a recipe: each transformation
# stays small enough that the object remains recognisable and inside the frame.
DEFAULT_IMAGE_AUGMENTATION = AugmentationSpec(
    rotation_range=10.0, width_shift_range=0.1, height_shift_range=0.1, zoom_range=0.1,
    horizontal_flip=True, fill_mode="nearest",
)


def configured_augmentation(augment: bool, ranges: Mapping[str, Any] | None) -> AugmentationSpec | None:
    """The augmentation a run's data options ask for: ``ranges`` when given, else the Keras
    book's CIFAR-10 recipe; None when ``augment`` is off."""
    if not augment:
        return None
    return AugmentationSpec.from_dict(ranges) if ranges else REFERENCE_CIFAR10_AUGMENTATION


def as_augmentation_spec(augment: AugmentationSpec | Mapping[str, Any] | None) -> AugmentationSpec | None:
    """Accept a spec, a dict of ranges or None; returns None when nothing would change."""
    if augment is None:
        return None
    if isinstance(augment, Mapping):
        augment = AugmentationSpec.from_dict(augment)
    if not isinstance(augment, AugmentationSpec):
        raise UserError(f"augment must be an AugmentationSpec, a dict of ranges or None, "
                        f"received: {augment!r}")
    return None if augment.is_identity else augment


def build_augmentation_layers(spec: AugmentationSpec | Mapping[str, Any], seed: int | None = None):
    """A ``keras.Sequential`` of random layers matching ``spec`` (float pixels 0..255 in and out).

    Mapping from ImageDataGenerator's units: rotation r degrees -> ``RandomRotation(r / 360)``
    (the layer's factor is a fraction of a full turn); shifts -> ``RandomTranslation`` with
    the same fractions; zoom z -> ``RandomZoom((-z, z), (-z, z))`` (height and width drawn
    independently, as ImageDataGenerator does); flips -> ``RandomFlip``; brightness b ->
    ``RandomBrightness(b, value_range=(0, 255))``; contrast c -> ``RandomContrast((c, c))``
    (a factor in [1 - c, 1 + c]).
    Each layer gets its own seed derived from ``seed`` so the streams differ.
    """
    import keras

    spec = spec if isinstance(spec, AugmentationSpec) else AugmentationSpec.from_dict(spec)

    def layer_seed(offset: int) -> int | None:
        # A fixed offset per layer kind: different streams, and adding a layer to the spec
        # does not change the draws of the others.
        return None if seed is None else seed + offset

    geometry = {"fill_mode": spec.fill_mode, "interpolation": "bilinear"}
    layers = []
    if spec.horizontal_flip or spec.vertical_flip:
        mode = {(True, False): "horizontal", (False, True): "vertical",
                (True, True): "horizontal_and_vertical"}[(spec.horizontal_flip, spec.vertical_flip)]
        layers.append(keras.layers.RandomFlip(mode, seed=layer_seed(0), name="flip"))
    if spec.rotation_range:
        layers.append(keras.layers.RandomRotation(spec.rotation_range / 360.0, seed=layer_seed(1),
                                                  name="rotation", **geometry))
    if spec.width_shift_range or spec.height_shift_range:
        layers.append(keras.layers.RandomTranslation(spec.height_shift_range, spec.width_shift_range,
                                                     seed=layer_seed(2), name="translation", **geometry))
    if spec.zoom_range:
        zoom = (-spec.zoom_range, spec.zoom_range)
        layers.append(keras.layers.RandomZoom(zoom, zoom, seed=layer_seed(3), name="zoom", **geometry))
    if spec.brightness_range:
        layers.append(keras.layers.RandomBrightness(spec.brightness_range, value_range=(0, 255),
                                                    seed=layer_seed(4), name="brightness"))
    if spec.contrast_range:
        # A pair, not a float: Keras 3.15 turns a float c into the range [1, 1 + c] (contrast
        # only ever raised), against its own docstring; (c, c) gives [1 - c, 1 + c].
        contrast = (spec.contrast_range, spec.contrast_range)
        layers.append(keras.layers.RandomContrast(contrast, value_range=(0, 255),
                                                  seed=layer_seed(5), name="contrast"))
    return keras.Sequential(layers, name="augmentation")


def augment_dataset(dataset, spec: AugmentationSpec | Mapping[str, Any] | None, seed: int | None = None):
    """Map a batched ``(images, labels)`` dataset through the random layers of ``spec``.

    Images come out float32 in 0..255.  Each pass over the dataset (each epoch) draws new
    transformations.  With a ``seed`` they are a function of (seed, epoch, batch)
    (:mod:`keras_cnn.data.randomness`): the same in every run, and in a resumed one.  An
    identity spec returns ``dataset`` unchanged.
    """
    import tensorflow as tf

    from keras_cnn.data.randomness import AUGMENTATION_STREAM, apply_random_layer, map_with_batch_seeds, sub_seed

    spec = as_augmentation_spec(spec)
    if spec is None:
        return dataset
    layers = build_augmentation_layers(spec, seed=seed)

    if seed is None:
        def augment(images, labels):
            return layers(tf.cast(images, tf.float32), training=True), labels

        return dataset.map(augment, num_parallel_calls=tf.data.AUTOTUNE)

    def augment_seeded(batch_seed, images, labels):
        images = tf.cast(images, tf.float32)
        for site, layer in enumerate(layers.layers):
            images = apply_random_layer(layer, images, sub_seed(batch_seed, site))
        return tf.cast(images, tf.float32), labels

    return map_with_batch_seeds(dataset, augment_seeded, seed, AUGMENTATION_STREAM)


def _random_contrast_function(contrast_range: float, seed: int | None):
    """A numpy per-image contrast change for ImageDataGenerator, which has none built in."""
    import numpy as np

    generator = np.random.default_rng(seed)

    def adjust_contrast(image):
        factor = generator.uniform(1.0 - contrast_range, 1.0 + contrast_range)
        mean = image.mean(axis=(0, 1), keepdims=True)
        return np.clip((image - mean) * factor + mean, 0.0, 255.0).astype(image.dtype)

    return adjust_contrast


def legacy_image_data_generator(spec: AugmentationSpec | Mapping[str, Any] | None = None,
                                seed: int | None = None, **kwargs):
    """The Keras 2 ``ImageDataGenerator`` configured with the same ranges as ``spec``.

    Under TF 2.21 with Keras 3 installed, ``tf.keras`` is Keras 3, and the class survives
    (deprecated) as ``tf.keras.preprocessing.image.ImageDataGenerator``, a legacy class of
    Keras 3 (:func:`keras_cnn.keras_internals.image_data_generator_class`); it needs scipy for
    the affine transforms.  ``contrast_range`` has no ImageDataGenerator option and is
    applied through ``preprocessing_function`` (drawn from ``seed``); ``kwargs`` (e.g.
    ``rescale``) pass through to the class.
    """
    from keras_cnn.keras_internals import image_data_generator_class

    ImageDataGenerator = image_data_generator_class()
    spec = AugmentationSpec() if spec is None else spec
    spec = spec if isinstance(spec, AugmentationSpec) else AugmentationSpec.from_dict(spec)
    options = {
        "rotation_range": spec.rotation_range,
        "width_shift_range": spec.width_shift_range,
        "height_shift_range": spec.height_shift_range,
        "zoom_range": spec.zoom_range,
        "horizontal_flip": spec.horizontal_flip,
        "vertical_flip": spec.vertical_flip,
        "fill_mode": spec.fill_mode,
    }
    if spec.brightness_range:
        options["brightness_range"] = (1.0 - spec.brightness_range, 1.0 + spec.brightness_range)
    if spec.contrast_range:
        if "preprocessing_function" in kwargs:
            raise UserError("legacy augmentation: contrast_range and preprocessing_function "
                            "cannot be combined")
        options["preprocessing_function"] = _random_contrast_function(spec.contrast_range, seed)
    options.update(kwargs)
    return ImageDataGenerator(**options)
