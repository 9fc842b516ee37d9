"""Training data for a run: tf.data datasets for train / validation / test, and the labels.

Two sources, one result (``PreparedData``):
- array datasets (MNIST, CIFAR-10): the last 20 % of the training images are the
  validation part (as Keras's ``validation_split``), the official test set is the test part;
- a split CSV plus an image folder: the ``train`` / ``validation`` / ``test`` parts.
Images are float32 pixels in 0..255; the model scales them itself.

Besides the single-process datasets, ``PreparedData.per_worker`` builds each worker's own
pipeline for multi-worker training: the same steps on that worker's shard (by file for
image folders) with the per-replica batch size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import tensorflow as tf

from keras_cnn.config import DataConfig
from keras_cnn.data.pipeline import array_pipeline
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
    train_counts: dict[int, int]
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: set[str] = field(default_factory=set)   # objectIds left out (reasons: RUN/skipped_images.csv)
    per_worker: PerWorkerInput | None = None


def augmentation_spec(data: DataConfig):
    """The augmentation of a run: the configured ranges, else the Keras book's CIFAR-10 recipe."""
    from keras_cnn.data.augment import configured_augmentation

    return configured_augmentation(data.augment, data.augmentation)


def regularization_spec(data: DataConfig):
    """The run's training-part regularisation (MixUp, CutMix, ...), or None when none is on."""
    from keras_cnn.data.regularize import as_regularization_spec

    return as_regularization_spec(data.regularization)


def _regularized(data: DataConfig, subset: str, dataset, num_classes: int, seed: int):
    """The training part through the regularisation map; with soft labels, the validation
    part gets one-hot targets so both go through the same categorical loss."""
    from keras_cnn.data.regularize import hard_targets, regularize_dataset

    spec = regularization_spec(data)
    if dataset is None or spec is None or not isinstance(dataset, tf.data.Dataset):
        return dataset
    if subset == "train":
        return regularize_dataset(dataset, spec, num_classes, seed=seed)
    return hard_targets(dataset, num_classes) if spec.soft_labels else dataset


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
    from keras_cnn.data.datasets import adapt_images, holdout_split, load_dataset

    arrays = load_dataset(data.dataset, data.dataset_path)
    x_train = adapt_images(arrays.x_train, input_shape)
    x_test = adapt_images(arrays.x_test, input_shape)
    train_part, validation_part = holdout_split(len(x_train), data.validation_split)
    x_fit, y_fit = x_train[train_part], arrays.y_train[train_part]
    x_validation, y_validation = x_train[validation_part], arrays.y_train[validation_part]

    spec = augmentation_spec(data)
    if data.augment_engine == "legacy" and regularization_spec(data) is not None:
        raise UserError("MixUp, CutMix, RandAugment, random erasing and label smoothing run in the tf.data "
                        "pipeline: use --augment-engine layers")
    if spec is not None and data.augment_engine == "legacy":
        from keras_cnn.data.augment import legacy_image_data_generator

        generator = legacy_image_data_generator(spec)
        train = generator.flow(x_fit.astype("float32"), y_fit, batch_size=batch_size, shuffle=True, seed=seed)
    else:
        train = array_pipeline(x_fit, y_fit, batch_size, shuffle=True, seed=seed, augment=spec)
    num_classes = len(arrays.labels)
    train = _regularized(data, "train", train, num_classes, seed)

    def evaluation_dataset(images, labels):
        if len(images) == 0:
            return None
        return array_pipeline(images, labels, batch_size, shuffle=False, seed=seed)

    sizes = {"train": len(x_fit), "validation": len(x_validation), "test": len(x_test)}
    steps, validation_steps = _per_worker_steps(sizes, batch_size)
    per_worker = PerWorkerInput(
        train=lambda context: _regularized(data, "train", array_pipeline(x_fit, y_fit, batch_size, True, seed,
                                                                         spec, context), num_classes, seed),
        validation=(lambda context: _regularized(
            data, "validation", array_pipeline(x_validation, y_validation, batch_size, False, seed, None, context),
            num_classes, seed)) if len(x_validation) else None,
        steps_per_epoch=steps, validation_steps=validation_steps,
    )
    counts = np.bincount(y_fit, minlength=len(arrays.labels))
    return PreparedData(
        train=train,
        validation=_regularized(data, "validation", evaluation_dataset(x_validation, y_validation), num_classes,
                                seed),
        test=evaluation_dataset(x_test, arrays.y_test),
        labels=arrays.labels,
        train_counts={index: int(count) for index, count in enumerate(counts)},
        sizes=sizes,
        per_worker=None if (spec is not None and data.augment_engine == "legacy") else per_worker,
    )


def prepare_folder_data(data: DataConfig, image_size: tuple[int, int], channels: int, batch_size: int,
                        seed: int, skipped_record=None, labels: list[str] | None = None) -> PreparedData:
    """The parts of a split CSV over an image folder, after checking every image once."""
    from keras_cnn.data.files import check_images_or_fail, refuse_emptied_groups
    from keras_cnn.data.pipeline import label_indices, make_dataset, per_replica_batch_size, subset_frame
    from keras_cnn.data.split import class_names, read_split_csv
    from keras_cnn.train.distribute import shard_file_list

    if data.augment and data.augment_engine == "legacy":
        raise UserError("--augment-engine legacy works with --dataset mnist|cifar10; "
                        "image folders are augmented with Keras preprocessing layers")
    frame = read_split_csv(data.split, data.allow_labels)
    labels = labels or class_names(frame["value"])
    skip = check_images_or_fail(data.images, list(frame["objectId"]), skip_bad=data.skip_bad_images,
                                record_path=skipped_record)
    refuse_emptied_groups(frame, skip, None if skipped_record is None else Path(skipped_record).parent)
    spec = augmentation_spec(data)
    rows = {subset: subset_frame(frame, subset, skip=skip) for subset in ("train", "validation", "test")}
    sizes = {subset: len(part) for subset, part in rows.items()}
    if sizes["train"] == 0:
        raise UserError(f"{data.split} has no usable 'train' rows")

    def dataset(subset: str, augment=None, input_context=None):
        if sizes[subset] == 0:
            return None
        part, size = rows[subset], batch_size
        if input_context is not None:
            # Each worker decodes only its own files.
            part = part.iloc[shard_file_list(range(len(part)), input_context)]
            size = per_replica_batch_size(batch_size, input_context)
        built = make_dataset(part, data.images, subset, image_size, size, channels=channels,
                             augment=augment, cache=data.cache if subset == "train" else True,
                             seed=seed, labels=labels, resize_mode=data.resize_mode)
        # The test part keeps class indices: it is scored outside the loss (evaluate_test).
        return built if subset == "test" else _regularized(data, subset, built, len(labels), seed)

    counts = np.bincount(label_indices(rows["train"]["value"], labels, "the train part"), minlength=len(labels))
    steps, validation_steps = _per_worker_steps(sizes, batch_size)
    return PreparedData(
        train=dataset("train", spec),
        validation=dataset("validation"),
        test=dataset("test"),
        labels=labels,
        train_counts={index: int(count) for index, count in enumerate(counts)},
        sizes=sizes,
        skipped=set(skip),
        per_worker=PerWorkerInput(
            train=lambda context: dataset("train", spec, context),
            validation=(lambda context: dataset("validation", None, context)) if sizes["validation"] else None,
            steps_per_epoch=steps, validation_steps=validation_steps,
        ),
    )


def as_model_targets(dataset, single_sigmoid_output: bool):
    """Shape labels for the model: (batch, 1) floats for a single sigmoid unit (the probability
    of class 1 when the targets are soft), else unchanged (indices or class probabilities)."""
    if dataset is None or not single_sigmoid_output or not isinstance(dataset, tf.data.Dataset):
        return dataset
    from keras_cnn.data.regularize import soft_targets

    return dataset.map(lambda images, labels: (images, soft_targets(labels, 2, single_sigmoid=True)),
                       num_parallel_calls=tf.data.AUTOTUNE)


def balanced_class_weights(counts: dict[int, int]) -> dict[int, float]:
    """``n_samples / (n_classes * n_in_class)``, as scikit-learn's "balanced" (absent classes get 1)."""
    total = sum(counts.values())
    present = [index for index, count in counts.items() if count > 0]
    return {index: (total / (len(present) * count) if count else 1.0) for index, count in counts.items()}

