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
    if not data.augment:
        return None
    from keras_cnn.data.augment import REFERENCE_CIFAR10_AUGMENTATION, AugmentationSpec

    if data.augmentation:
        return AugmentationSpec.from_dict(data.augmentation)
    return REFERENCE_CIFAR10_AUGMENTATION


def _per_worker_steps(sizes: dict[str, int], batch_size: int) -> tuple[int, int | None]:
    """Steps per epoch when every worker must run the same number (whole global batches)."""
    validation_steps = max(1, sizes["validation"] // batch_size) if sizes["validation"] else None
    return max(1, sizes["train"] // batch_size), validation_steps


def array_pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                   augment=None, input_context=None) -> tf.data.Dataset:
    """In-memory uint8 images -> (shuffled, augmented) float32 batches; one worker's shard if asked."""
    from keras_cnn.train.distribute import per_replica_batch_size

    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = per_replica_batch_size(batch_size, input_context)
    if shuffle:
        dataset = dataset.shuffle(min(len(images), 50_000), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if augment is not None:
        from keras_cnn.data.augment import augment_dataset

        dataset = augment_dataset(dataset, augment, seed=seed)
    return dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


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
    if spec is not None and data.augment_engine == "legacy":
        from keras_cnn.data.augment import legacy_image_data_generator

        generator = legacy_image_data_generator(spec)
        train = generator.flow(x_fit.astype("float32"), y_fit, batch_size=batch_size, shuffle=True, seed=seed)
    else:
        train = array_pipeline(x_fit, y_fit, batch_size, shuffle=True, seed=seed, augment=spec)

    def evaluation_dataset(images, labels):
        if len(images) == 0:
            return None
        return array_pipeline(images, labels, batch_size, shuffle=False, seed=seed)

    sizes = {"train": len(x_fit), "validation": len(x_validation), "test": len(x_test)}
    steps, validation_steps = _per_worker_steps(sizes, batch_size)
    per_worker = PerWorkerInput(
        train=lambda context: array_pipeline(x_fit, y_fit, batch_size, True, seed, spec, context),
        validation=(lambda context: array_pipeline(x_validation, y_validation, batch_size, False, seed, None,
                                                   context)) if len(x_validation) else None,
        steps_per_epoch=steps, validation_steps=validation_steps,
    )
    counts = np.bincount(y_fit, minlength=len(arrays.labels))
    return PreparedData(
        train=train,
        validation=evaluation_dataset(x_validation, y_validation),
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
    from keras_cnn.data.pipeline import label_indices, make_dataset, subset_frame
    from keras_cnn.data.split import class_names, read_split_csv
    from keras_cnn.train.distribute import per_replica_batch_size, shard_file_list

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
        return make_dataset(part, data.images, subset, image_size, size, channels=channels,
                            augment=augment, cache=data.cache if subset == "train" else True,
                            seed=seed, labels=labels, resize_mode=data.resize_mode)

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
    """Shape labels for the model: (batch, 1) floats for a single sigmoid unit, else indices."""
    if dataset is None or not single_sigmoid_output or not isinstance(dataset, tf.data.Dataset):
        return dataset
    return dataset.map(lambda images, labels: (images, tf.cast(tf.reshape(labels, (-1, 1)), tf.float32)),
                       num_parallel_calls=tf.data.AUTOTUNE)


def balanced_class_weights(counts: dict[int, int]) -> dict[int, float]:
    """``n_samples / (n_classes * n_in_class)``, as scikit-learn's "balanced" (absent classes get 1)."""
    total = sum(counts.values())
    present = [index for index, count in counts.items() if count > 0]
    return {index: (total / (len(present) * count) if count else 1.0) for index, count in counts.items()}


def _to_float(images, labels):
    return tf.cast(images, tf.float32), tf.cast(labels, tf.int32)
