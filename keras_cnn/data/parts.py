"""The parts of a run's data (train, validation, test): the one loader every step reads them with.

A run's images come from one of two sources, each opened once:

- :class:`SplitParts`: a split CSV over an image folder; a part is its rows of the split
  (in file order) minus the images left out (``skip``), labels indexed by ``labels``;
- :class:`ArrayParts`: MNIST / CIFAR-10 arrays; validation is the last fraction of the
  training images (as Keras's ``validation_split``), test the official test set.

Each gives a part's size, its object ids and targets, and its ``tf.data`` pipeline of
(images 0..255, int32 class indices) batches: uint8 images (a Keras model casts them
itself), float32 when augmented or when the options ask for float32; multi-label data (a
split CSV only) has float32 multi-hot targets [n, N] in place of class indices.  Training (``keras_cnn.train.stage_data``),
evaluation, the int8 calibration images of an export and the accuracy of a quantized
model all load parts through here; :mod:`keras_cnn.run_data` opens the parts of a finished
run from its ``config.json``, ``labels.txt`` and ``skipped_images.csv``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import tensorflow as tf

from keras_cnn.config import DataConfig
from keras_cnn.data.pipeline import (DatasetOptions, EmptyPart, array_pipeline, label_indices, make_dataset,
                                     per_replica_batch_size, shard_file_list, subset_frame)
from keras_cnn.data.multilabel import multi_hot, multi_label_class_names, read_split_table
from keras_cnn.data.split import PARTS, class_names
from keras_cnn.errors import UserError


@dataclass
class Part:
    """One part in file order: who is in it, their classes, and their images."""

    name: str
    object_ids: list[str]
    targets: np.ndarray               # int64 class indices into the labels; multi-label: float32 multi-hot [n, N]
    dataset: tf.data.Dataset          # (images 0..255, the targets) batches, same order
    multi_label: bool = False

    @property
    def true_indices(self) -> np.ndarray:
        """The class indices of a single-label part (its targets)."""
        return self.targets

    def images(self) -> tf.data.Dataset:
        """The image batches alone (what a model predicts on)."""
        return self.dataset.map(_images_only, num_parallel_calls=tf.data.AUTOTUNE)


def _images_only(images, labels):
    return images


def _check_part(name: str) -> str:
    if name not in PARTS:
        raise UserError(f"subset must be one of {PARTS}, received {name!r}")
    return name


class SplitParts:
    """The parts of a split CSV over an image folder (``data.split``, ``data.images``).

    ``labels``: the class list (index order), default the sorted labels of the whole split;
    ``skip``: objectIds left out of every part (the bad images of ``--skip-bad-images``).
    ``multi_label`` is true for a multi-label split CSV or with ``data.multi_label``.
    """

    def __init__(self, data: DataConfig, labels: Sequence[str] | None = None, skip: Iterable[str] = ()):
        if not data.images:
            raise UserError(f"the split CSV {data.split} comes without an image folder (--images)")
        self.data = data
        self.frame, self.multi_label = read_split_table(data.split, data.allow_labels, data.multi_label,
                                                        data.label_delimiter)
        if labels:
            self.labels = [str(label) for label in labels]
        else:
            self.labels = (multi_label_class_names(self.frame["value"]) if self.multi_label
                           else class_names(self.frame["value"]))
        self.skip = set(skip)

    def leaving_out(self, skip: Iterable[str]) -> SplitParts:
        """The same parts without the objectIds in ``skip`` as well."""
        parts = copy.copy(self)
        parts.skip = self.skip | set(skip)
        return parts

    def rows(self, name: str):
        """The part's rows (objectId, value, type) in file order, without the skipped images."""
        return subset_frame(self.frame, _check_part(name), skip=self.skip)

    def size(self, name: str) -> int:
        return len(self.rows(name))

    def true_indices(self, name: str) -> np.ndarray:
        """The part's targets: class indices (int64), or multi-hot rows (float32 [n, N]) for multi-label data."""
        source = f"{self.data.split} ({name})"
        if self.multi_label:
            return multi_hot(self.rows(name)["value"], self.labels, source)
        return np.asarray(label_indices(self.rows(name)["value"], self.labels, source), dtype=np.int64)

    def dataset(self, name: str, options: DatasetOptions, input_context=None) -> tf.data.Dataset:
        """The part's pipeline (``options`` say how: size, batch, cache, shuffle, augmentation...).

        ``input_context``: one worker's share of a multi-worker run (its own files, the
        per-replica batch size).
        """
        rows = self.rows(name)
        if len(rows) == 0:
            raise EmptyPart(f"the {name!r} part of {self.data.split} has no images"
                            + (" left after skipping bad ones" if self.skip else ""))
        if input_context is not None:
            rows = rows.iloc[shard_file_list(range(len(rows)), input_context)]
            options = replace(options, batch_size=per_replica_batch_size(options.batch_size, input_context))
        return make_dataset(rows, self.data.images, name, replace(options, labels=self.labels, skip=None,
                                                                  multi_label=self.multi_label))

    def part(self, name: str, options: DatasetOptions) -> Part:
        """The part in file order (``options.shuffle`` is turned off); an empty part is an :class:`EmptyPart`."""
        rows = self.rows(name)
        dataset = self.dataset(name, replace(options, shuffle=False))
        return Part(name, [str(object_id) for object_id in rows["objectId"]], self.true_indices(name), dataset,
                    self.multi_label)


class ArrayParts:
    """The parts of a keras.datasets dataset (``data.dataset``), adapted to ``input_shape``.

    ``input_shape``: (height, width, channels) of the model; channels ``None`` keeps the
    dataset's, ``input_shape`` ``None`` keeps the images as they are.

    ``labels``: the run's class list, when its order could differ from the dataset's names.
    """

    multi_label = False   # MNIST and CIFAR-10 have one label per image

    def __init__(self, data: DataConfig, input_shape: tuple[int, int, int | None] | None,
                 labels: Sequence[str] | None = None):
        from keras_cnn.data.datasets import holdout_split, load_dataset

        self.arrays = load_dataset(data.dataset, data.dataset_path)
        self.data = data
        self.input_shape = tuple(input_shape) if input_shape else None
        self.labels = [str(label) for label in labels] if labels else list(self.arrays.labels)
        train, validation = holdout_split(len(self.arrays.x_train), data.validation_split)
        self._slices = {"train": train, "validation": validation}

    def size(self, name: str) -> int:
        return len(self._values(name)[1])

    def _values(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if _check_part(name) == "test":
            return self.arrays.x_test, self.arrays.y_test
        part = self._slices[name]
        return self.arrays.x_train[part], self.arrays.y_train[part]

    def object_ids(self, name: str) -> list[str]:
        """``test/000123`` for the official test set, ``train/000123`` for the training images."""
        first, source = (0, "test") if name == "test" else (self._slices[name].start, "train")
        return [f"{source}/{first + offset:06d}" for offset in range(self.size(name))]

    def true_indices(self, name: str) -> np.ndarray:
        # Array labels are indices into the dataset's class names; the run's labels are those names.
        names = [self.arrays.labels[int(value)] for value in np.asarray(self._values(name)[1]).reshape(-1)]
        return np.asarray(label_indices(names, self.labels, f"{self.data.dataset} ({name})"), dtype=np.int64)

    def images(self, name: str) -> np.ndarray:
        """The part's uint8 images at the model's input shape."""
        from keras_cnn.data.datasets import adapt_images

        images = self._values(name)[0]
        if self.input_shape is None:
            return images
        height, width, channels = self.input_shape
        return adapt_images(images, (height, width, channels or images.shape[-1]))

    def dataset(self, name: str, options: DatasetOptions, input_context=None) -> tf.data.Dataset | None:
        """The part's pipeline (shuffled and augmented as ``options`` say); None for an empty part."""
        if self.size(name) == 0:
            return None
        shuffle = name == "train" if options.shuffle is None else options.shuffle
        return array_pipeline(self.images(name), self.true_indices(name).astype("int32"), options.batch_size,
                              shuffle=shuffle, seed=options.seed if options.seed is not None else 0,
                              augment=options.augment, input_context=input_context, dtype=options.dtype)

    def part(self, name: str, options: DatasetOptions) -> Part:
        """The part in file order; an empty part is an :class:`EmptyPart`."""
        if self.size(name) == 0:
            raise EmptyPart(f"the {name!r} part of {self.data.dataset} has no images")
        return Part(name, self.object_ids(name), self.true_indices(name),
                    self.dataset(name, replace(options, shuffle=False)))


def open_parts(data: DataConfig, input_shape: tuple[int, int, int] | None = None,
               labels: Sequence[str] | None = None, skip: Iterable[str] = ()) -> SplitParts | ArrayParts:
    """The parts of ``data``: a split CSV over an image folder, or a keras.datasets dataset."""
    if data.split:
        return SplitParts(data, labels, skip)
    if data.dataset:
        return ArrayParts(data, input_shape, labels)
    raise UserError("the data names neither a split CSV nor a dataset: cannot rebuild its parts")


def part_options(data: DataConfig, image_size: Any, channels: int, batch_size: int, **settings: Any) -> DatasetOptions:
    """The :class:`DatasetOptions` of a run's data: its input geometry, resizing and pixel limit, and ``settings``."""
    return DatasetOptions(image_size=image_size, batch_size=batch_size, channels=channels,
                          resize_mode=data.resize_mode, max_image_pixels=data.max_image_pixels, **settings)
