"""The data a training stage fits on: tf.data datasets for train / validation / test, and the labels.

Two sources (:mod:`keras_cnn.data.parts` loads their parts), one result (``PreparedData``):
- array datasets (MNIST, CIFAR-10): the last 20 % of the training images are the
  validation part (as Keras's ``validation_split``), the official test set is the test part;
- a split CSV plus an image folder: the ``train`` / ``validation`` / ``test`` parts.
Images are float32 pixels in 0..255; the model scales them itself.  Multi-label data (a
split CSV only) gives float32 multi-hot targets in place of class indices.

Besides the single-process datasets, ``PreparedData.per_worker`` builds each worker's own
pipeline for multi-worker training: the same steps on that worker's shard (by file for
image folders) with the per-replica batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from keras_cnn.config import DataConfig
from keras_cnn.data.parts import ArrayParts, SplitParts, part_options
from keras_cnn.data.pipeline import DatasetOptions
from keras_cnn.data.multilabel import one_row_per_label
from keras_cnn.data.split import PARTS
from keras_cnn.errors import UserError


@dataclass
class PerWorkerInput:
    """``dataset_fn(input_context)`` factories for ``strategy.distribute_datasets_from_function``."""

    train: Callable
    validation: Callable | None
    steps_per_epoch: int
    validation_steps: int | None


@dataclass
class PreparedData:
    """Datasets of (float32 images 0..255, int32 class indices) batches, and what they hold."""

    train: tf.data.Dataset
    validation: tf.data.Dataset | None
    test: tf.data.Dataset | None
    labels: list[str]
    train_counts: dict[int, int]          # training images per class (multi-label: holding each label)
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)   # objectIds left out (reasons: RUN/skipped_images.csv)
    per_worker: PerWorkerInput | None = None
    parts: SplitParts | ArrayParts | None = None     # the loader the datasets came from
    multi_label: bool = False                        # targets are multi-hot rows (one sigmoid per label)


def augmentation_spec(data: DataConfig):
    """The augmentation of a run: the configured ranges, else the Keras book's CIFAR-10 recipe."""
    from keras_cnn.data.augment import configured_augmentation

    return configured_augmentation(data.augment, data.augmentation)


def regularization_spec(data: DataConfig):
    """The run's training-part regularisation (MixUp, CutMix, ...), or None when none is on."""
    from keras_cnn.data.regularize import as_regularization_spec

    return as_regularization_spec(data.regularization)


def _regularized(data: DataConfig, subset: str, dataset, num_classes: int, seed: int, multi_label: bool = False):
    """The training part through the regularisation map; with soft labels, the validation
    part gets one-hot targets so both go through the same categorical loss (multi-label
    targets are float rows already)."""
    from keras_cnn.data.regularize import hard_targets, regularize_dataset

    spec = regularization_spec(data)
    if dataset is None or spec is None or not isinstance(dataset, tf.data.Dataset):
        return dataset
    if subset == "train":
        return regularize_dataset(dataset, spec, num_classes, seed=seed, multi_label=multi_label)
    return hard_targets(dataset, num_classes) if spec.soft_labels and not multi_label else dataset


def _per_worker_steps(sizes: dict[str, int], batch_size: int) -> tuple[int, int | None]:
    """Steps per epoch when every worker must run the same number (whole global batches)."""
    validation_steps = max(1, sizes["validation"] // batch_size) if sizes["validation"] else None
    return max(1, sizes["train"] // batch_size), validation_steps


def prepare_array_data(data: DataConfig, input_shape: tuple[int, int, int], batch_size: int,
                       seed: int) -> PreparedData:
    """MNIST / CIFAR-10 arrays adapted to ``input_shape``, as tf.data datasets.

    With ``data.augment`` the training part is augmented: by Keras preprocessing layers in
    the tf.data pipeline (engine "layers"), or by the legacy ``ImageDataGenerator`` (engine
    "legacy", a Python iterator, for comparison).  The validation part is never augmented.
    """
    parts = ArrayParts(data, input_shape)
    spec = augmentation_spec(data)
    if data.augment_engine == "legacy" and regularization_spec(data) is not None:
        raise UserError("MixUp, CutMix, RandAugment, random erasing and label smoothing run in the tf.data "
                        "pipeline: use --augment-engine layers")
    legacy = spec is not None and data.augment_engine == "legacy"
    options = DatasetOptions(input_shape[:2], batch_size, seed=seed)
    train_options = replace(options, augment=spec, shuffle=True)
    if legacy:
        from keras_cnn.data.augment import legacy_image_data_generator

        from keras_cnn.data.randomness import SeededFlow

        generator = legacy_image_data_generator(spec)
        train = SeededFlow(generator.flow(parts.images("train").astype("float32"),
                                          parts.true_indices("train").astype("int32"),
                                          batch_size=batch_size, shuffle=True, seed=seed), seed)
    else:
        train = parts.dataset("train", train_options)
    num_classes = len(parts.labels)
    sizes = {name: parts.size(name) for name in PARTS}
    steps, validation_steps = _per_worker_steps(sizes, batch_size)
    per_worker = PerWorkerInput(
        train=lambda context: _regularized(data, "train", parts.dataset("train", train_options, context),
                                           num_classes, seed),
        validation=(lambda context: _regularized(data, "validation", parts.dataset("validation", options, context),
                                                 num_classes, seed)) if sizes["validation"] else None,
        steps_per_epoch=steps, validation_steps=validation_steps,
    )
    counts = np.bincount(parts.true_indices("train"), minlength=num_classes)
    return PreparedData(
        train=_regularized(data, "train", train, num_classes, seed),
        validation=_regularized(data, "validation", parts.dataset("validation", options), num_classes, seed),
        test=parts.dataset("test", options),
        labels=parts.labels,
        train_counts={index: int(count) for index, count in enumerate(counts)},
        sizes=sizes,
        per_worker=None if legacy else per_worker,
        parts=parts,
    )


def prepare_folder_data(data: DataConfig, image_size: tuple[int, int], channels: int, batch_size: int,
                        seed: int, skipped_record=None, labels: list[str] | None = None,
                        leave_out: set[str] | frozenset[str] = frozenset(),
                        bad_image_advice: str | None = None) -> PreparedData:
    """The parts of a split CSV over an image folder, after checking every image once.

    ``leave_out``: objectIds out of every part before the check (those the run's input record
    leaves out: gone and accepted so, or excluded).  ``bad_image_advice``: what the command
    can do about bad images [default: fix them or pass --skip-bad-images].
    """
    from keras_cnn.data.files import SKIP_ADVICE, check_images_or_fail, refuse_emptied_groups

    if data.augment and data.augment_engine == "legacy":
        raise UserError("--augment-engine legacy works with --dataset mnist|cifar10; "
                        "image folders are augmented with Keras preprocessing layers")
    parts = SplitParts(data, labels, skip=leave_out)
    skip = check_images_or_fail(data.images, list(parts.frame["objectId"][~parts.frame["objectId"].isin(leave_out)]),
                                skip_bad=data.skip_bad_images, record_path=skipped_record,
                                max_pixels=data.max_image_pixels, advice=bad_image_advice or SKIP_ADVICE)
    refuse_emptied_groups(one_row_per_label(parts.frame) if parts.multi_label else parts.frame, skip,
                          None if skipped_record is None else Path(skipped_record).parent)
    parts = parts.leaving_out(skip)
    spec = augmentation_spec(data)
    sizes = {name: parts.size(name) for name in PARTS}
    if sizes["train"] == 0:
        raise UserError(f"{data.split} has no usable 'train' rows")
    options = part_options(data, image_size, channels, batch_size, seed=seed)

    def dataset(name: str, augment=None, input_context=None):
        if sizes[name] == 0:
            return None
        built = parts.dataset(name, replace(options, augment=augment, cache=data.cache if name == "train" else True),
                              input_context)
        # The test part keeps class indices: it is scored outside the loss (stage.score_test_part).
        return built if name == "test" else _regularized(data, name, built, len(parts.labels), seed,
                                                         parts.multi_label)

    if parts.multi_label:
        counts = parts.true_indices("train").sum(axis=0).astype(np.int64)
    else:
        counts = np.bincount(parts.true_indices("train"), minlength=len(parts.labels))
    steps, validation_steps = _per_worker_steps(sizes, batch_size)
    return PreparedData(
        train=dataset("train", spec),
        validation=dataset("validation"),
        test=dataset("test"),
        labels=parts.labels,
        train_counts={index: int(count) for index, count in enumerate(counts)},
        sizes=sizes,
        skipped=set(skip),
        per_worker=PerWorkerInput(
            train=lambda context: dataset("train", spec, context),
            validation=(lambda context: dataset("validation", None, context)) if sizes["validation"] else None,
            steps_per_epoch=steps, validation_steps=validation_steps,
        ),
        parts=parts,
        multi_label=parts.multi_label,
    )


def as_model_targets(dataset, single_sigmoid_output: bool):
    """Shape labels for the model: (batch, 1) floats for a single sigmoid unit (the probability
    of class 1 when the targets are soft), else unchanged (indices or class probabilities)."""
    if dataset is None or not single_sigmoid_output or not isinstance(dataset, tf.data.Dataset):
        return dataset
    from keras_cnn.data.regularize import soft_targets

    return dataset.map(lambda images, labels: (images, soft_targets(labels, 2, single_sigmoid=True)),
                       num_parallel_calls=tf.data.AUTOTUNE)


def balanced_positive_weights(positives: dict[int, int], images: int) -> list[float]:
    """Multi-label ``--class-weight balanced``: per label, the weight of its positive targets,
    negatives / positives in the training part (1 for a label with no positive or no negative)."""
    return [float((images - count) / count) if 0 < count < images else 1.0
            for _index, count in sorted(positives.items())]


def balanced_class_weights(counts: dict[int, int]) -> dict[int, float]:
    """``n_samples / (n_classes * n_in_class)``, as scikit-learn's "balanced" (absent classes get 1)."""
    total = sum(counts.values())
    present = [index for index, count in counts.items() if count > 0]
    return {index: (total / (len(present) * count) if count else 1.0) for index, count in counts.items()}

