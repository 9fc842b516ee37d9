"""A finished run's data, part by part, rebuilt from its folder: what evaluation and export read.

The parts come from :mod:`keras_cnn.data.parts`, the loader training used, opened with what
the run recorded: ``config.json`` (the data and the model's input size), ``labels.txt``
(the class order, which must agree with ``config.json``'s), ``skipped_images.csv`` (the
images training left out) and ``inputs.json`` (each image's SHA-1 and stamp, and the images
left out since; :mod:`keras_cnn.data.input_record`).  So ``kcnn evaluate``, an export's int8
calibration images and a quantized model's accuracy see each image exactly as training did,
and refuse images that changed since.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from keras_cnn.config import RunConfig
from keras_cnn.data.files import read_skipped_record, refuse_too_large
from keras_cnn.data.input_record import check_inputs, recorded_left_out
from keras_cnn.errors import UserError
from keras_cnn.label_lists import check_same_labels
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


def run_labels(run: RunDirectory, config: RunConfig) -> list[str]:
    """The run's class list: ``labels.txt``, refused unless it agrees with ``config.json``'s labels
    (content and order, both Unicode-normalised)."""
    labels = run.read_labels()
    if config.labels:
        check_same_labels(run.labels_path, labels, run.config_path, config.labels,
                          "put back config.json's order (training wrote it) or train the run again")
    return labels


def check_run_inputs(run: RunDirectory, config: RunConfig, *, accept: bool = False, command: str = "kcnn",
                     list_path: str | os.PathLike | None = None, split_itself: bool = False) -> set[str]:
    """Check the run's split and images against its input record (made now when it has none).

    Changed, missing or added images and an edited split are refused (one line naming them and
    ``RUN/input_changes.csv``) unless ``accept`` (``--accept-input-changes`` on ``command``),
    which records them.  ``split_itself``: the run split its image folder itself (a record made
    now watches it for added images).  Returns the objectIds every part leaves out.  Data
    from keras.datasets has no record.
    """
    if not (config.data.split and config.data.images):
        return set()
    by = f"{command} --accept-input-changes" if accept else command
    return check_inputs(run.root, config.data, accept=accept, by=by, list_path=list_path,
                        split_itself=split_itself).left_out


def run_parts(run: RunDirectory, config: RunConfig) -> SplitParts | ArrayParts:
    """The parts of the run's data, with its labels and without the images training skipped or the
    run's input record leaves out (missing and accepted so, or excluded)."""
    from keras_cnn.data.parts import open_parts

    data = config.data
    if data.split and not data.images:
        raise UserError(f"{run.config_path} names a split CSV ({data.split}) but no image folder")
    if not (data.split or data.dataset):
        raise UserError(f"{run.config_path} names neither a split CSV nor a dataset: cannot rebuild the data")
    image_size, channels = input_geometry(config)
    input_shape = (*image_size, channels) if image_size else None
    skip = set(read_skipped_record(run.skipped_images_path)) | recorded_left_out(run.root)
    return open_parts(data, input_shape, labels=run_labels(run, config), skip=skip)


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
