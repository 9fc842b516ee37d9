"""A split CSV plus an image folder -> a ``tf.data`` pipeline of (images, class indices or multi-hot targets).

The order of the stages is the point of this module::

    file paths, labels ─▶ read + decode + resize (uint8, parallel TF ops) ─▶ cache ─▶ shuffle
        ─▶ batch (uint8) ─▶ random augmentation (float32), if any ─▶ prefetch

Decoding and resizing are done once: the cache (memory, or files with ``cache=PATH``)
holds the resized uint8 images, a quarter of the float32 size.  Batches stay uint8 up to
the model, which casts them to float inside (a Keras model converts its input to the dtype
of its ``Input``): a quarter of the bytes through memory and, on a GPU, through the copy
to the device; ``dtype="float32"`` gives float batches to code that wants them.  Augmentation
layers compute in float32 and their output reaches the model as it is (rounding it back to
uint8 would change the pixels training sees).  Everything random comes
after the cache, so each epoch reshuffles and draws new augmentations of the same
cached pixels; every draw is a function of (seed, epoch, batch) (:mod:`keras_cnn.data.randomness`), so a
resumed run sees the order and augmentations an uninterrupted one would.  Images go through :func:`keras_cnn.data.images.load_image`, the function
the exported model uses too, so training and serving see the same pixels.
"""

from __future__ import annotations

import glob
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import tensorflow as tf

from keras_cnn.choices import PixelType, names
from keras_cnn.data.augment import AugmentationSpec, as_augmentation_spec, augment_dataset
from keras_cnn.data.files import resolve_image_paths
from keras_cnn.data.images import RESIZE_MODES, load_image
from keras_cnn.data.multilabel import multi_hot, multi_label_class_names, read_split_table
from keras_cnn.data.pixel_limit import DEFAULT_MAX_IMAGE_PIXELS
from keras_cnn.data.randomness import shuffle_per_epoch
from keras_cnn.data.split import PARTS, class_names, validate_object_ids
from keras_cnn.errors import UserError

SUBSETS = (*PARTS, "all")
PIXEL_TYPES = names(PixelType)

# A file cache is read back into new tensors, so its shuffle buffer really holds images:
# bound it to about this many bytes (a memory cache shares its tensors with the buffer).
FILE_CACHE_SHUFFLE_BYTES = 512 * 1024 * 1024


def _as_split_frame(split_csv: str | os.PathLike | pd.DataFrame, multi_label: bool = False) -> pd.DataFrame:
    """A split as a frame with string columns objectId, value, type (a multi-label split's value:
    the labels joined by ``;``)."""
    if isinstance(split_csv, pd.DataFrame):
        missing = [column for column in ("objectId", "value", "type") if column not in split_csv.columns]
        if missing:
            raise UserError(f"the split has no column(s) {', '.join(missing)} "
                            f"(columns: {', '.join(map(str, split_csv.columns))})")
        frame = split_csv.reset_index(drop=True)
        frame = frame.assign(objectId=frame["objectId"].astype(str), value=frame["value"].astype(str),
                             type=frame["type"].astype(str))
        # A frame may not come from read_split_csv: refuse paths and '..' before they reach the disk.
        validate_object_ids(frame["objectId"], "the split", paths=True)
        return frame
    return read_split_table(split_csv, multi_label=multi_label)[0]


def subset_frame(split_csv: str | os.PathLike | pd.DataFrame, subset: str,
                 skip: Iterable[str] | None = None) -> pd.DataFrame:
    """The rows of ``subset`` (train, validation, test or all) minus ``skip``, in file order.

    Returns columns objectId, value, type with a fresh 0..n-1 index.  ``make_dataset``
    yields a non-training subset (shuffle off) in exactly this order, so predictions line
    up with these object ids row for row.
    """
    if subset not in SUBSETS:
        raise UserError(f"subset must be one of {', '.join(SUBSETS)}, received: {subset!r}")
    frame = _as_split_frame(split_csv)
    keep = pd.Series(True, index=frame.index)
    if subset != "all":
        keep &= frame["type"] == subset
    if skip:
        keep &= ~frame["objectId"].isin(set(skip))
    return frame[keep].reset_index(drop=True)


def label_indices(values: Iterable[Any], labels: Sequence[str], source: str) -> list[int]:
    """Class index (position in ``labels``) of every label value; unknown labels are a ``UserError``."""
    values = [str(value) for value in values]
    index_of = {label: index for index, label in enumerate(labels)}
    unknown = sorted(set(values) - set(index_of))
    if unknown:
        raise UserError(f"{source} has label(s) {', '.join(map(repr, unknown[:10]))} "
                        f"that are not among the classes {list(labels)}")
    return [index_of[value] for value in values]


def _cache_file_prefix(cache: str | os.PathLike, subset: str, fingerprint_parts: Iterable[Any]) -> str:
    """``PATH-<subset>-<hash>``: a file cache is tied to exactly these images and settings.

    TensorFlow reads an existing cache file without checking what produced it, so a cache
    of other images, another size or another label order must get a different name; so
    must one written by another decoder (the TensorFlow version and the source of
    ``keras_cnn.data.images`` are part of the hash).
    """
    from keras_cnn.data import images

    fingerprint_parts = (*fingerprint_parts, tf.__version__, Path(images.__file__).read_bytes())
    digest = hashlib.sha1()
    for part in fingerprint_parts:
        digest.update(repr(part).encode("utf-8"))
        digest.update(b"\0")
    prefix = f"{os.fspath(cache)}-{subset}-{digest.hexdigest()[:12]}"
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_cache(prefix)
    return prefix


def _remove_abandoned_cache(prefix: str) -> None:
    """Delete what a killed run left of an unfinished cache, so a resumed run can rebuild it.

    A finished cache has ``PREFIX.index``; without it, a lockfile and data shards are
    leftovers (TensorFlow would refuse to start with the lockfile present).  The one case
    this gets wrong is another process filling the very same cache at this moment (two
    runs started at once with the same cache path, images and settings): it would lose
    its half-written cache and could fail.
    """
    if Path(f"{prefix}.index").exists():
        return
    directory, name = os.path.split(prefix)
    for entry in Path(directory or ".").glob(glob.escape(name) + "*"):
        if entry.name.endswith(".lockfile") or ".data-" in entry.name:
            entry.unlink(missing_ok=True)


class EmptyPart(UserError):
    """A part of the data (train, validation, test) has no images to give."""


@dataclass(frozen=True)
class DatasetOptions:
    """How :func:`make_dataset` turns the rows of a part into batches (everything but which rows).

    ``image_size``: (height, width) or one side; ``resize_mode``: stretch, pad or crop.
    ``channels``: 3 (grey becomes RGB) or 1 (RGB becomes grey); alpha is dropped.
    ``augment``: an :class:`AugmentationSpec` or a dict of its ranges, applied to batches
    after the cache; None for none.
    ``cache``: True (memory), False, or a file path prefix (the files get
    ``-<subset>-<hash>`` appended, the hash of the image list and settings).
    ``shuffle``: default True for train only; reshuffled every epoch; ``seed`` fixes it (each
    epoch's order and augmentations are then those of its epoch number, see
    :func:`keras_cnn.data.randomness.set_epoch`).
    ``labels``: the class list (index order); default: the sorted distinct values of the
    whole split, so every subset maps labels the same way.
    ``skip``: objectIds to leave out (e.g. the bad images found before training).
    ``max_image_pixels``: an image whose header says it is larger stops the pipeline before
    it is decoded (0 or None: no limit).
    ``dtype``: ``"uint8"`` (the pixels as decoded; a Keras model casts them itself) or
    ``"float32"``.  With augmentation the batches are float32 either way: the layers'
    output, not rounded back.
    ``multi_label``: each row's value is a set of labels (joined by ``;``); the targets are
    float32 multi-hot rows [B, N] instead of int32 class indices [B].
    The fields keep the order of :func:`make_dataset`'s former parameters, so
    ``DatasetOptions(image_size, batch_size, ...)`` reads as those calls did.
    """

    image_size: tuple[int, int] | int
    batch_size: int
    channels: int = 3
    augment: AugmentationSpec | Mapping[str, Any] | None = None
    cache: bool | str | os.PathLike = True
    shuffle: bool | None = None
    seed: int | None = None
    labels: Sequence[str] | None = None
    resize_mode: str = "stretch"
    skip: Iterable[str] | None = None
    drop_remainder: bool = False
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS
    dtype: PixelType = "uint8"
    multi_label: bool = False


def make_dataset(split_csv: str | os.PathLike | pd.DataFrame, images_dir: str | os.PathLike, subset: str,
                 *settings: Any, **named_settings: Any) -> tf.data.Dataset:
    """Batches of ``(images 0..255 [B, H, W, C], int32 class indices [B])``, or of ``(images,
    float32 multi-hot targets [B, N])`` with ``multi_label``: uint8 images, or float32 as
    ``dtype`` says or when augmented (see :class:`DatasetOptions`).

    ``split_csv``: a split CSV path or its frame (objectId, value, type).
    ``images_dir``: the image folder, flat or ``ab/cd/`` sharded.
    ``subset``: train, validation, test, or all.
    ``settings``: one :class:`DatasetOptions`, or its fields as arguments
    (``make_dataset(split, folder, "train", image_size=224, batch_size=32)``).
    Without shuffling, batches follow :func:`subset_frame` order.  An empty subset is an
    :class:`EmptyPart` naming it.
    """
    if len(settings) == 1 and not named_settings and isinstance(settings[0], DatasetOptions):
        options = settings[0]
    else:
        options = DatasetOptions(*settings, **named_settings)
    image_size = options.image_size
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    image_size = (int(image_size[0]), int(image_size[1]))
    channels, resize_mode, batch_size, skip = options.channels, options.resize_mode, options.batch_size, options.skip
    if min(image_size) < 1:
        raise UserError(f"image size must be positive, received: {image_size}")
    if channels not in (1, 3):
        raise UserError(f"channels must be 1 or 3, received: {channels}")
    if resize_mode not in RESIZE_MODES:
        raise UserError(f"resize mode must be one of {', '.join(RESIZE_MODES)}, received: {resize_mode!r}")
    _check_pixel_type(options.dtype)
    if int(batch_size) < 1:
        raise UserError(f"batch size must be at least 1, received: {batch_size}")
    spec = as_augmentation_spec(options.augment)

    frame = _as_split_frame(split_csv, options.multi_label)
    if options.labels is not None:
        labels = [str(label) for label in options.labels]
    else:
        labels = multi_label_class_names(frame["value"]) if options.multi_label else class_names(frame["value"])
    rows = subset_frame(frame, subset, skip)
    if len(rows) == 0:
        source = split_csv if not isinstance(split_csv, pd.DataFrame) else "the split"
        raise EmptyPart(f"the {subset!r} part of {source} has no images"
                        + (" left after skipping bad ones" if skip else ""))
    if options.multi_label:
        targets = tf.constant(multi_hot(rows["value"], labels, f"the {subset} part"), dtype=tf.float32)
    else:
        targets = tf.constant(label_indices(rows["value"], labels, f"the {subset} part"), dtype=tf.int32)
    paths = resolve_image_paths(images_dir, rows["objectId"].tolist())
    shuffle, seed, cache = options.shuffle, options.seed, options.cache
    if shuffle is None:
        shuffle = subset == "train"

    limit = options.max_image_pixels

    @tf.autograph.experimental.do_not_convert   # plain ops: AutoGraph's conversion would only add tracing time
    def load(path, label):
        # The header is read once, for the pixel limit and the JPEG's decode scale alike.
        return load_image(tf.io.read_file(path), image_size, channels, resize_mode, max_pixels=limit), label

    dataset = tf.data.Dataset.from_tensor_slices((paths, targets))
    if shuffle and not cache:
        # Nothing is cached: shuffling the file names is free and a perfect shuffle.
        dataset = shuffled(dataset, len(paths), seed)
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if cache:
        if cache is True:
            dataset = dataset.cache()
            buffer_size = len(paths)
        else:
            fingerprint = (os.path.abspath(images_dir), paths, targets.numpy().tolist(), image_size, channels,
                           resize_mode)
            dataset = dataset.cache(_cache_file_prefix(cache, subset, fingerprint))
            image_bytes = image_size[0] * image_size[1] * channels
            buffer_size = max(int(batch_size), min(len(paths), FILE_CACHE_SHUFFLE_BYTES // image_bytes))
        if shuffle:
            dataset = shuffled(dataset, buffer_size, seed)
    dataset = dataset.batch(int(batch_size), drop_remainder=options.drop_remainder,
                            num_parallel_calls=tf.data.AUTOTUNE)
    if spec is not None:
        dataset = augment_dataset(dataset, spec, seed=seed)
    elif options.dtype == "float32":
        dataset = dataset.map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _check_pixel_type(dtype: str) -> None:
    if dtype not in PIXEL_TYPES:
        raise UserError(f"dtype must be one of {', '.join(PIXEL_TYPES)}, received: {dtype!r}")


def shuffled(dataset: tf.data.Dataset, buffer_size: int, seed: int | None) -> tf.data.Dataset:
    """Reshuffled every epoch: in an order set by (seed, epoch) when seeded, else by tf.data as it likes."""
    if seed is None:
        return dataset.shuffle(buffer_size, reshuffle_each_iteration=True)
    return shuffle_per_epoch(dataset, buffer_size, seed)


def _to_float(images, labels):
    return tf.cast(images, tf.float32), labels


def array_pipeline(images: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool, seed: int,
                   augment=None, input_context=None, dtype: PixelType = "uint8") -> tf.data.Dataset:
    """In-memory uint8 images -> (shuffled, augmented) batches; one worker's shard if asked.

    Images stay uint8 unless ``dtype`` is ``"float32"`` or they are augmented (float32).
    """
    _check_pixel_type(dtype)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if input_context is not None:
        dataset = dataset.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
        batch_size = per_replica_batch_size(batch_size, input_context)
    if shuffle:
        dataset = shuffled(dataset, min(len(images), 50_000), seed)
    dataset = dataset.batch(batch_size)
    if augment is not None:
        dataset = augment_dataset(dataset, augment, seed=seed)
    convert = _float_images_int_labels if augment is not None or dtype == "float32" else _int_labels
    return dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def shard_file_list(paths: Sequence[Any], input_context=None) -> list[Any]:
    """The files this input pipeline reads: every ``num_input_pipelines``-th one, from its own offset.

    Sharding by file (not by element after reading) means no worker decodes images another
    worker uses.  ``input_context`` is the ``tf.distribute.InputContext`` handed to a
    ``dataset_fn``; ``None`` keeps every file.
    """
    paths = list(paths)
    if input_context is None or input_context.num_input_pipelines == 1:
        return paths
    pipelines = input_context.num_input_pipelines
    if len(paths) < pipelines:
        raise UserError(
            f"cannot shard {len(paths)} file(s) across {pipelines} workers: each worker needs at least one"
        )
    return paths[input_context.input_pipeline_id::pipelines]


def per_replica_batch_size(global_batch_size: int, input_context=None) -> int:
    """The batch one replica gets from a global batch; it must divide evenly."""
    if input_context is None:
        return int(global_batch_size)
    replicas = input_context.num_replicas_in_sync
    if global_batch_size % replicas:
        raise UserError(
            f"the batch size is global and must divide by the {replicas} replicas, "
            f"received: {global_batch_size}"
        )
    return global_batch_size // replicas


def _float_images_int_labels(images, labels):
    return tf.cast(images, tf.float32), tf.cast(labels, tf.int32)


def _int_labels(images, labels):
    return images, tf.cast(labels, tf.int32)
