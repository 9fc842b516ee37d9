"""Training-time regularisation in the tf.data pipeline: RandAugment, random erasing,
MixUp, CutMix and label smoothing, with soft labels carried to the loss.

A :class:`RegularizationSpec` holds the options (``--label-smoothing E``, ``--mixup ALPHA``,
``--cutmix ALPHA``, ``--randaugment N,M``, ``--random-erasing P``).
:func:`regularize_dataset` maps batched ``(float32 images 0..255, int class indices)`` of the
training part to ``(images, targets)``; the targets are soft class probabilities ``[B, N]``
(or ``[B, 1]`` for a model with one sigmoid unit) whenever MixUp, CutMix or label smoothing
is on, because a mixed or smoothed label is no longer one class.  The order is timm's:
per-image RandAugment, then random erasing, then MixUp or CutMix on the batch, then label
smoothing.

Multi-label targets (float32 multi-hot rows, one sigmoid per label) are mixed the same way,
and label smoothing moves each label's target towards 1/2 (every label is a two-way
decision): (1 - E) x target + E / 2.

The validation and test parts stay unmixed and hard: :func:`hard_targets` turns their class
indices into one-hot rows so the same cross-entropy loss applies, and :class:`HardLabelAccuracy`
(named ``accuracy``, so history.csv keeps its columns) scores a prediction against the
dominant class of a soft target — on hard targets that is plain accuracy.

What Keras 3.15's layers do, checked here (tf.data graph, float32 0..255 batches):

* ``keras.layers.MixUp(alpha)`` and ``CutMix`` mix images and one-hot labels of a batch with
  a shuffled copy of itself, per image; they are used as they are.  ``CutMix`` has no
  ``alpha``: its ``factor`` draws alpha from a range, so ``factor=(a, a)`` is Beta(a, a)
  as in the CutMix paper; the label weight is the exact pasted area.
* ``keras.layers.RandomErasing(factor=P)`` erases one rectangle (2 %..33 % of the area) with
  random noise in a fraction P of the images; used as it is.
* ``keras.layers.RandAugment`` is not used: it draws the operations once per batch (every
  image of a batch gets the same ones) and its single ``factor`` means +-factor x 360 degrees
  of rotation and +-factor of the image for shifts, far from RandAugment's magnitudes.
  :func:`rand_augment` instead picks N operations per image from the same Keras layers,
  set up with timm's magnitude table (M on timm's 0..10 scale: rotation up to 3 x M degrees,
  shear 0.03 x M, translation 0.045 x M of the side, ...).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

from keras_cnn.errors import UserError

MAX_MAGNITUDE = 10  # timm's RandAugment scale: rand-m9 is 9 of 10


@dataclass(frozen=True)
class RegularizationSpec:
    """Regularisation options of a training run (all off by default).

    ``label_smoothing``: E in [0, 1): targets become (1 - E) x one-hot + E / classes.
    ``mixup``: Beta(alpha, alpha) MixUp of image pairs (0 = off); ``cutmix``: CutMix with
    Beta(alpha, alpha) box areas, alpha in (0, 1] (0 = off).  With both, each batch gets
    one of them (half the batches each), as timm does.
    ``randaugment``: (N, M) = N operations per image at magnitude M (0..10), or None.
    ``random_erasing``: probability that an image gets one random rectangle erased.
    """

    label_smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    randaugment: tuple[int, int] | None = None
    random_erasing: float = 0.0

    def __post_init__(self):
        for name, low, high, high_open in (("label_smoothing", 0.0, 1.0, True), ("mixup", 0.0, math.inf, False),
                                           ("cutmix", 0.0, 1.0, False), ("random_erasing", 0.0, 1.0, False)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < low or value > high or (high_open and value == high):
                bound = f"[{low:g}, {high:g}{')' if high_open else ']'}"
                raise UserError(f"--{name.replace('_', '-')} must be a number in {bound}, received: {value!r}")
        if self.randaugment is not None:
            object.__setattr__(self, "randaugment", parse_randaugment(self.randaugment))

    @property
    def is_identity(self) -> bool:
        """True when no option is on."""
        return not (self.label_smoothing or self.mixup or self.cutmix or self.randaugment or self.random_erasing)

    @property
    def soft_labels(self) -> bool:
        """True when training targets are soft probabilities rather than one class each."""
        return bool(self.label_smoothing or self.mixup or self.cutmix)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (what ``config.json`` stores)."""
        values = dataclasses.asdict(self)
        values["randaugment"] = list(self.randaugment) if self.randaugment else None
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> RegularizationSpec:
        """Build from a dict (``config.json``); unknown keys are a ``UserError``."""
        values = dict(values or {})
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown regularisation option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)


def parse_randaugment(value: Any) -> tuple[int, int] | None:
    """``"2,9"`` / ``[2, 9]`` -> (2, 9): N operations (1..11) at magnitude M (0..10); None/"" -> None."""
    if value is None or value == "":
        return None
    parts = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else None
    try:
        if parts is None or len(parts) != 2:
            raise ValueError
        count, magnitude = (int(str(part).strip()) for part in parts)
    except ValueError:
        raise UserError(f"--randaugment takes N,M (operations per image, magnitude 0..{MAX_MAGNITUDE}), "
                        f"e.g. 2,9; received: {value!r}") from None
    if not 1 <= count <= len(RAND_AUGMENT_OPERATIONS) or not 0 <= magnitude <= MAX_MAGNITUDE:
        raise UserError(f"--randaugment N,M needs 1 <= N <= {len(RAND_AUGMENT_OPERATIONS)} and "
                        f"0 <= M <= {MAX_MAGNITUDE}, received: {value!r}")
    return count, magnitude


def as_regularization_spec(value: RegularizationSpec | Mapping[str, Any] | None) -> RegularizationSpec | None:
    """Accept a spec, a dict or None; returns None when nothing would change."""
    if value is None:
        return None
    spec = value if isinstance(value, RegularizationSpec) else RegularizationSpec.from_dict(value)
    return None if spec.is_identity else spec


def uses_soft_labels(regularization: RegularizationSpec | Mapping[str, Any] | None) -> bool:
    """True when training targets are class probabilities (MixUp, CutMix or label smoothing on)."""
    spec = as_regularization_spec(regularization)
    return spec is not None and spec.soft_labels


# --------------------------------------------------------------------------- RandAugment


def _layer_table() -> dict[str, Callable[[float, int | None], Any]]:
    """RandAugment's operations: name -> (magnitude 0..1, seed) -> a Keras layer (0..255 floats).

    Magnitudes follow timm's table where Keras has the same operation (rotation 30 degrees,
    shear 0.3, translation 0.45 of the side, colour/contrast/sharpness +-0.9 at full
    magnitude, posterize down to 4 bits, solarize threshold down to 0).
    """
    import keras

    value_range = (0, 255)
    return {
        "rotate": lambda m, seed: keras.layers.RandomRotation(30.0 * m / 360.0, fill_mode="nearest", seed=seed),
        "shear": lambda m, seed: keras.layers.RandomShear(0.3 * m, 0.3 * m, fill_mode="nearest", seed=seed),
        "translate": lambda m, seed: keras.layers.RandomTranslation(0.45 * m, 0.45 * m, fill_mode="nearest",
                                                                    seed=seed),
        "brightness": lambda m, seed: keras.layers.RandomBrightness(0.45 * m, value_range=value_range, seed=seed),
        "contrast": lambda m, seed: keras.layers.RandomContrast((0.9 * m, 0.9 * m), value_range=value_range,
                                                                seed=seed),
        "color": lambda m, seed: keras.layers.RandomColorDegeneration((0.0, 0.9 * m), value_range=value_range,
                                                                      seed=seed),
        "sharpness": lambda m, seed: keras.layers.RandomSharpness((0.5 - 0.45 * m, 0.5 + 0.45 * m),
                                                                  value_range=value_range, seed=seed),
        "posterize": lambda m, seed: keras.layers.RandomPosterization(max(1, round(8 - 4 * m)),
                                                                      value_range=value_range, seed=seed),
        "solarize": lambda m, seed: keras.layers.Solarization(threshold_factor=(1.0 - m, 1.0 - m),
                                                              value_range=value_range, seed=seed),
        "auto_contrast": lambda m, seed: keras.layers.AutoContrast(value_range=value_range),
        "equalize": lambda m, seed: keras.layers.Equalization(value_range=value_range),
    }


RAND_AUGMENT_OPERATIONS = ("rotate", "shear", "translate", "brightness", "contrast", "color", "sharpness",
                           "posterize", "solarize", "auto_contrast", "equalize")


def rand_augment(count: int, magnitude: int, seed: int | None = None) -> Callable:
    """A function ``(images [B, H, W, C] float32 0..255, batch_seed=None) -> the same`` applying RandAugment.

    Every image gets ``count`` operations, each drawn uniformly (with repetition) from
    :data:`RAND_AUGMENT_OPERATIONS`, at ``magnitude`` (0..10); the operations' own random
    parameters (angle, shift, ...) are drawn per image by the Keras layers.  Each operation
    runs only on the images that drew it.  ``batch_seed``: the batch's stateless seed
    (:func:`keras_cnn.data.randomness.map_with_batch_seeds`); None draws from the layers' state.
    """
    import tensorflow as tf

    from keras_cnn.data.randomness import apply_random_layer, sub_seed, uniform

    table = _layer_table()
    strength = magnitude / MAX_MAGNITUDE
    base = 0 if seed is None else int(seed)
    # One set of layers per round, each with its own seed, so rounds draw differently.
    rounds = [[table[name](strength, None if seed is None else base + 100 * step + index)
               for index, name in enumerate(RAND_AUGMENT_OPERATIONS)] for step in range(count)]

    def apply(images, batch_seed=None):
        images = tf.cast(images, tf.float32)
        batch = tf.shape(images)[0]
        for step, layers in enumerate(rounds):
            round_seed = sub_seed(batch_seed, step)
            choice = uniform([batch], sub_seed(round_seed, len(layers)), 0, len(layers), dtype=tf.int32,
                             op_seed=None if seed is None else base + 7919 * (step + 1))
            for index, layer in enumerate(layers):
                # Only the images that drew this operation go through it (an 11th of the work
                # of running every operation on the whole batch).
                positions = tf.where(tf.equal(choice, index))
                images = tf.cond(
                    tf.size(positions) > 0,
                    lambda layer=layer, positions=positions, images=images, index=index: tf.tensor_scatter_nd_update(
                        images, positions,
                        tf.clip_by_value(tf.cast(apply_random_layer(layer, tf.gather_nd(images, positions),
                                                                    sub_seed(round_seed, index)),
                                                 tf.float32), 0.0, 255.0)),
                    lambda images=images: images,
                )
        return images

    return apply


# --------------------------------------------------------------------------- the dataset map


def soft_targets(labels, num_classes: int, single_sigmoid: bool = False):
    """Integer class indices [B] (or already soft [B, N]) -> float32 targets for the model.

    ``single_sigmoid``: a model with one sigmoid unit takes the probability of class 1, [B, 1].
    """
    import tensorflow as tf

    if labels.shape.rank == 2 and labels.shape[-1] == num_classes and labels.dtype.is_floating:
        targets = tf.cast(labels, tf.float32)
    else:
        targets = tf.one_hot(tf.cast(tf.reshape(labels, [-1]), tf.int32), num_classes, dtype=tf.float32)
    return targets[:, 1:2] if single_sigmoid else targets


def hard_targets(dataset, num_classes: int, single_sigmoid: bool = False):
    """Map ``(images, class indices)`` to ``(images, one-hot targets)`` for the validation part.

    Used beside :func:`regularize_dataset` when the training targets are soft, so that both
    parts go through the same (categorical) loss; the labels stay hard.
    """
    import tensorflow as tf

    if dataset is None:
        return None
    return dataset.map(lambda images, labels: (images, soft_targets(labels, num_classes, single_sigmoid)),
                       num_parallel_calls=tf.data.AUTOTUNE)


def regularize_dataset(dataset, spec: RegularizationSpec | Mapping[str, Any] | None, num_classes: int,
                       seed: int | None = None, single_sigmoid: bool = False, multi_label: bool = False):
    """Map batched ``(float32 images 0..255, class indices)`` through the options of ``spec``.

    Returns ``dataset`` unchanged when nothing is on.  With soft labels (MixUp, CutMix,
    label smoothing) the targets become float32 probabilities (see :func:`soft_targets`);
    with image-only options (RandAugment, random erasing) they stay class indices.  With a
    ``seed``, every draw is a function of (seed, epoch, batch) (:mod:`keras_cnn.data.randomness`).
    ``multi_label``: the targets are multi-hot rows [B, N] (mixed as they are; smoothed
    towards 1/2 per label).
    """
    import keras
    import tensorflow as tf

    from keras_cnn.data.randomness import (REGULARIZATION_STREAM, apply_random_layer, map_with_batch_seeds, sub_seed,
                                           uniform)

    spec = as_regularization_spec(spec)
    if spec is None:
        return dataset
    if num_classes < (1 if multi_label else 2):
        raise UserError(f"regularisation needs at least 2 classes, received {num_classes}")
    base = 0 if seed is None else int(seed)

    def seeded(offset: int) -> int | None:
        return None if seed is None else base + offset

    augment = rand_augment(*spec.randaugment, seed=seeded(11)) if spec.randaugment else None
    eraser = keras.layers.RandomErasing(factor=(spec.random_erasing, spec.random_erasing), value_range=(0, 255),
                                        seed=seeded(12)) if spec.random_erasing else None
    mixers = []
    if spec.mixup:
        mixers.append(keras.layers.MixUp(alpha=spec.mixup, seed=seeded(13)))
    if spec.cutmix:
        mixers.append(keras.layers.CutMix(factor=(spec.cutmix, spec.cutmix), seed=seeded(14)))

    def mix(images, targets, batch_seed):
        outputs = [apply_random_layer(mixer, {"images": images, "labels": targets}, sub_seed(batch_seed, 3 + index))
                   for index, mixer in enumerate(mixers)]
        if len(outputs) == 1:
            return outputs[0]["images"], outputs[0]["labels"]
        # Both MixUp and CutMix: one of them per batch, half the batches each.
        use_first = uniform([], sub_seed(batch_seed, 2), op_seed=seeded(15)) < 0.5
        return (tf.where(use_first, outputs[0]["images"], outputs[1]["images"]),
                tf.where(use_first, outputs[0]["labels"], outputs[1]["labels"]))

    def regularize(images, labels, batch_seed=None):
        images = tf.cast(images, tf.float32)
        if augment is not None:
            images = augment(images, sub_seed(batch_seed, 0))
        if eraser is not None:
            images = apply_random_layer(eraser, images, sub_seed(batch_seed, 1))
        if not spec.soft_labels:
            return images, labels
        targets = soft_targets(labels, num_classes)
        if mixers:
            images, targets = mix(images, targets, batch_seed)
        if spec.label_smoothing:
            # Multi-label: each label is its own two-way decision, smoothed towards 1/2.
            share = spec.label_smoothing / (2 if multi_label else num_classes)
            targets = targets * (1.0 - spec.label_smoothing) + share
        return tf.cast(images, tf.float32), (targets[:, 1:2] if single_sigmoid else targets)

    if seed is None:
        return dataset.map(regularize, num_parallel_calls=tf.data.AUTOTUNE)
    return map_with_batch_seeds(dataset, lambda batch_seed, images, labels: regularize(images, labels, batch_seed),
                                seed, REGULARIZATION_STREAM)


# --------------------------------------------------------------------------- loss and metric


def hard_label_accuracy(targets, outputs):
    """Accuracy against the dominant class of each target (soft or one-hot; one sigmoid unit too)."""
    import keras

    ops = keras.ops
    if outputs.shape[-1] == 1:
        return ops.cast(ops.equal(ops.cast(targets > 0.5, "int32"), ops.cast(outputs > 0.5, "int32")),
                        "float32")[..., 0]
    return ops.cast(ops.equal(ops.argmax(targets, axis=-1), ops.argmax(outputs, axis=-1)), "float32")


SOFT_LABEL_LOSSES = {"sparse_categorical_crossentropy": "categorical_crossentropy",
                     "categorical_crossentropy": "categorical_crossentropy",
                     "binary_crossentropy": "binary_crossentropy"}


def soft_label_loss(loss: str) -> str:
    """The loss that takes soft targets in place of ``loss`` (sparse -> categorical cross-entropy)."""
    if loss not in SOFT_LABEL_LOSSES:
        raise UserError(f"MixUp, CutMix and label smoothing need a cross-entropy loss, received: {loss!r}")
    return SOFT_LABEL_LOSSES[loss]


def label_accuracy(targets, outputs):
    """Multi-label: the fraction of an image's labels decided right at 0.5 (1 - its Hamming loss);
    soft targets (MixUp, smoothing) count by which side of 1/2 they lie."""
    import keras

    ops = keras.ops
    return ops.mean(ops.cast(ops.equal(targets > 0.5, outputs > 0.5), "float32"), axis=-1)


def label_accuracy_metric():
    """A Keras metric of :func:`label_accuracy` named ``accuracy``, so a multi-label run's history.csv,
    plots and progress lines have the columns every run has."""
    import keras

    return keras.metrics.MeanMetricWrapper(label_accuracy, name="accuracy")


def hard_label_accuracy_metric():
    """A Keras metric of :func:`hard_label_accuracy` named ``accuracy``, so history.csv, the
    plots and the checkpoint keep reading ``accuracy`` / ``val_accuracy``."""
    import keras

    return keras.metrics.MeanMetricWrapper(hard_label_accuracy, name="accuracy")
