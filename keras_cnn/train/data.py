"""Training data for a run: tf.data datasets for train / validation / test, and the labels.

Two sources, one result (``PreparedData``):
- array datasets (MNIST, CIFAR-10): the last 20 % of the training images are the
  validation part (as Keras's ``validation_split``), the official test set is the test part;
- a split CSV plus an image folder: the ``train`` / ``validation`` / ``test`` parts.
Images are float32 pixels in 0..255; the model scales them itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from keras_cnn.config import DataConfig
from keras_cnn.errors import UserError


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


def augmentation_spec(data: DataConfig):
    """The augmentation of a run: the configured ranges, else the Keras book's CIFAR-10 recipe."""
    if not data.augment:
        return None
    from keras_cnn.data.augment import REFERENCE_CIFAR10_AUGMENTATION, AugmentationSpec

    if data.augmentation:
        return AugmentationSpec.from_dict(data.augmentation)
    return REFERENCE_CIFAR10_AUGMENTATION


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
        train = tf.data.Dataset.from_tensor_slices((x_fit, y_fit))
        train = train.shuffle(min(len(x_fit), 50_000), seed=seed, reshuffle_each_iteration=True)
        train = train.batch(batch_size)
        if spec is not None:
            from keras_cnn.data.augment import augment_dataset

            train = augment_dataset(train, spec, seed=seed)
        train = train.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    def evaluation_dataset(images, labels):
        if len(images) == 0:
            return None
        dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(batch_size)
        return dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

    counts = np.bincount(y_fit, minlength=len(arrays.labels))
    return PreparedData(
        train=train,
        validation=evaluation_dataset(x_validation, y_validation),
        test=evaluation_dataset(x_test, arrays.y_test),
        labels=arrays.labels,
        train_counts={index: int(count) for index, count in enumerate(counts)},
        sizes={"train": len(x_fit), "validation": len(x_validation), "test": len(x_test)},
    )


def prepare_folder_data(data: DataConfig, image_size: tuple[int, int], channels: int, batch_size: int,
                        seed: int, skipped_record=None, labels: list[str] | None = None) -> PreparedData:
    """The parts of a split CSV over an image folder, after checking every image once."""
    from keras_cnn.data.files import check_images_or_fail
    from keras_cnn.data.pipeline import make_dataset, subset_frame
    from keras_cnn.data.split import class_names, read_split_csv

    if data.augment and data.augment_engine == "legacy":
        raise UserError("--augment-engine legacy works with --dataset mnist|cifar10; "
                        "image folders are augmented with Keras preprocessing layers")
    frame = read_split_csv(data.split)
    labels = labels or class_names(frame["value"])
    skip = check_images_or_fail(data.images, list(frame["objectId"]), skip_bad=data.skip_bad_images,
                                record_path=skipped_record)
    spec = augmentation_spec(data)
    sizes = {subset: len(subset_frame(frame, subset, skip=skip)) for subset in ("train", "validation", "test")}
    if sizes["train"] == 0:
        raise UserError(f"{data.split} has no usable 'train' rows")

    def dataset(subset: str, augment=None):
        if sizes[subset] == 0:
            return None
        return make_dataset(frame, data.images, subset, image_size, batch_size, channels=channels,
                            augment=augment, cache=data.cache if subset == "train" else True,
                            seed=seed, labels=labels, resize_mode=data.resize_mode, skip=skip)

    train_rows = subset_frame(frame, "train", skip=skip)
    index_of = {label: index for index, label in enumerate(labels)}
    counts = {index: 0 for index in range(len(labels))}
    for value in train_rows["value"]:
        counts[index_of[value]] += 1
    return PreparedData(
        train=dataset("train", spec),
        validation=dataset("validation"),
        test=dataset("test"),
        labels=labels,
        train_counts=counts,
        sizes=sizes,
        skipped=set(skip),
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
