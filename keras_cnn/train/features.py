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

# The inference pass is shared with kcnn doctor; imported here so callers keep one name for it.
from keras_cnn.models.features import compiled_forward, extract_features


def feature_dataset(features: np.ndarray, labels: np.ndarray, batch_size: int, shuffle: bool,
                    seed: int | None = None) -> tf.data.Dataset:
    """Batches of (cached features, class indices) for fitting or validating the head."""
    dataset = tf.data.Dataset.from_tensor_slices((features, labels))
    if shuffle:
        dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
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
