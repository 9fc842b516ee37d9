"""A finished run's data, part by part, rebuilt from its folder: what evaluation and export read.

The parts come from :mod:`keras_cnn.data.parts`, the loader training used, opened with what
the run recorded: ``config.json`` (the data and the model's input size), ``labels.txt``
(the class order) and ``skipped_images.csv`` (the images training left out).  So
``kcnn evaluate``, an export's int8 calibration images and a quantized model's accuracy
see each image exactly as training did.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from keras_cnn.config import RunConfig
from keras_cnn.data.files import read_skipped_record, refuse_too_large
from keras_cnn.errors import UserError
from keras_cnn.runs import RunDirectory

if TYPE_CHECKING:  # the part loader needs TensorFlow, imported when a part is loaded
    from keras_cnn.data.parts import ArrayParts, Part, SplitParts

SUBSETS = ("test", "validation", "train")


def input_geometry(config: RunConfig) -> tuple[tuple[int, int] | None, int | None]:
    """(image_size, channels) the model was trained on, from the data or model options."""
    image_size = config.data.image_size
    channels = config.data.channels
    input_shape = config.model.input_shape
    if input_shape is not None:
        image_size = image_size or (int(input_shape[0]), int(input_shape[1]))
        channels = channels or int(input_shape[2])
    return (tuple(int(side) for side in image_size) if image_size else None), channels


def run_parts(run: RunDirectory, config: RunConfig) -> SplitParts | ArrayParts:
    """The parts of the run's data, with its labels and without the images training skipped."""
    from keras_cnn.data.parts import open_parts

    data = config.data
    if data.split and not data.images:
        raise UserError(f"{run.config_path} names a split CSV ({data.split}) but no image folder")
    if not (data.split or data.dataset):
        raise UserError(f"{run.config_path} names neither a split CSV nor a dataset: cannot rebuild the data")
    image_size, channels = input_geometry(config)
    input_shape = (*image_size, channels) if image_size else None
    return open_parts(data, input_shape, labels=run.read_labels(), skip=read_skipped_record(run.skipped_images_path))


def load_part(run: RunDirectory, config: RunConfig, subset: str, batch_size: int) -> Part:
    """One part of a finished run, in file order, as the model saw it (see :class:`keras_cnn.data.parts.Part`)."""
    from keras_cnn.data.parts import SplitParts, part_options

    if subset not in SUBSETS:
        raise UserError(f"subset must be one of {SUBSETS}, received {subset!r}")
    image_size, channels = input_geometry(config)
    if config.data.split and image_size is None:
        raise UserError(f"{run.config_path} records no image size for the model")
    parts = run_parts(run, config)
    if isinstance(parts, SplitParts) and subset != "train":
        # An image over the run's pixel limit put in its folder since: one clear line before any work.
        # The training part is only sampled (int8 calibration): the pipeline's own guard covers it.
        refuse_too_large(config.data.images, parts.rows(subset)["objectId"], config.data.max_image_pixels, run.root)
    return parts.part(subset, part_options(config.data, image_size, channels or 3, batch_size, cache=False))


def load_subset(run_config: RunConfig | dict[str, Any], run_dir: str | os.PathLike, subset: str, batch_size: int):
    """``(object_ids, true_indices, images)`` of one part of a run, in file order.

    ``run_config`` is a :class:`keras_cnn.config.RunConfig` (or its dict). objectIds are
    file names, or ``test/000123`` for MNIST/CIFAR-10 arrays; class indices point into
    ``labels.txt``; ``images`` is a ``tf.data.Dataset`` of float32 0..255 image batches.
    """
    if isinstance(run_config, dict):
        run_config = RunConfig.from_dict(run_config)
    part = load_part(RunDirectory(run_dir), run_config, subset, batch_size)
    return part.object_ids, part.true_indices, part.images()
