"""Bottleneck features: run a frozen base once, then train the head on what it produced.

With the base frozen and no augmentation, every epoch would push the same images through
the same base; computing the pooled features once makes a head epoch cost a few matrix
products instead of a full forward pass (measured in benchmarks/transfer_stage1.py).
Fine-tuning does the same with the frozen layers below the unfreeze point: their output at
the boundary (:mod:`keras_cnn.models.boundary`) is cached and only the part above trains
(measured in benchmarks/finetune_cache.py).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from keras_cnn.data.pipeline import shuffled
from keras_cnn.progress import ProgressBar

# Above this size the features go to a memory-mapped .npy file under the run.
IN_MEMORY_LIMIT_BYTES = 1 << 30


def compiled_forward(feature_extractor: keras.Model):
    """The extractor's inference pass as one ``tf.function`` for any batch size.

    Traced once and shared by every part (train, validation), so a large base is not
    traced again for each part or for a part's smaller last batch.
    """
    signature = tf.TensorSpec([None, *feature_extractor.input_shape[1:]], tf.float32)
    return tf.function(lambda images: feature_extractor(images, training=False), input_signature=[signature])


def extract_features(feature_extractor: keras.Model, dataset: tf.data.Dataset, count: int,
                     spill_path: str | Path | None = None, description: str = "features", forward=None):
    """Run ``feature_extractor`` over ``dataset`` once; returns (features, labels) as arrays.

    ``dataset`` yields (images, labels) batches; features come out in its order, one row of
    the extractor's output shape per image (pooled vectors, or a boundary tensor of a
    partly frozen base).  Progress (a bar, plain lines off a terminal) goes to stderr.  Features larger than
    ``IN_MEMORY_LIMIT_BYTES`` are written to ``spill_path`` (a memory-mapped ``.npy``).
    ``forward``: a :func:`compiled_forward` to reuse across calls.
    """
    shape = tuple(int(size) for size in feature_extractor.output_shape[1:])
    nbytes = count * int(np.prod(shape)) * 4
    if spill_path is not None and nbytes > IN_MEMORY_LIMIT_BYTES:
        Path(spill_path).parent.mkdir(parents=True, exist_ok=True)
        features = np.lib.format.open_memmap(spill_path, mode="w+", dtype="float32", shape=(count, *shape))
    else:
        features = np.empty((count, *shape), dtype="float32")
    labels = np.empty((count,), dtype="int32")
    position = 0

    forward = forward or compiled_forward(feature_extractor)
    with ProgressBar(count, f"extracting {description} ({count} images)") as progress:
        for images, batch_labels in dataset:
            batch = forward(images).numpy().reshape(len(images), *shape)
            features[position:position + len(batch)] = batch
            labels[position:position + len(batch)] = np.asarray(batch_labels).reshape(-1)
            position += len(batch)
            progress.update(position)
    if position != count:
        features, labels = features[:position], labels[:position]
    return features, labels


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
                    seed: int | None = None) -> tf.data.Dataset:
    """Batches of (cached features, class indices) for fitting or validating the head."""
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        # The order the image pipeline would give the images these features came from.
        dataset = shuffled(dataset, len(features), seed)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def cached_fit_inputs(frozen: keras.Model, trained: keras.Model, data, batch_size: int, seed: int,
                      folder: str | Path | None, description: str, train_in_order: tf.data.Dataset | None = None):
    """What a stage fits when ``trained`` learns from ``frozen``'s output, computed once per image.

    ``frozen`` and ``trained`` are the two halves of the stage's whole model, sharing its
    weights (the feature extractor and head of stage 1, or the frozen bottom and trainable
    top of a fine-tune).  ``train_in_order``: the train part unshuffled (file order), so the
    cached rows are shuffled every epoch exactly as the image pipeline would shuffle the
    images; default ``data.train``.  Large caches spill to ``folder`` (None: they stay in
    memory), removed by the returned cleanup.  Returns a :class:`keras_cnn.train.stage.FitInputs`.
    """
    from keras_cnn.train.stage import FitInputs

    folder = Path(folder) if folder is not None else None

    def spill_path(name: str) -> Path | None:
        return folder / name if folder is not None else None

    forward = compiled_forward(frozen)
    train_inputs, train_labels = extract_features(
        frozen, train_in_order if train_in_order is not None else data.train, data.sizes["train"],
        spill_path("train.npy"), f"train {description}", forward=forward)
    validation = None
    if data.validation is not None:
        validation_inputs, validation_labels = extract_features(
            frozen, data.validation, data.sizes["validation"], spill_path("validation.npy"),
            f"validation {description}", forward=forward)
        validation = feature_dataset(validation_inputs, validation_labels, batch_size, shuffle=False)
    train = feature_dataset(train_inputs, train_labels, batch_size, shuffle=True, seed=seed)
    cleanup = (lambda: shutil.rmtree(folder, ignore_errors=True)) if folder is not None else None
    return FitInputs(trained, train, validation, cleanup=cleanup)
