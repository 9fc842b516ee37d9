"""Bottleneck features: run a frozen base once, then train the head on what it produced.

With the base frozen and no augmentation, every epoch would push the same images through
the same base; computing the pooled features once makes a head epoch cost a few matrix
products instead of a full forward pass (measured in benchmarks/transfer_stage1.py).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

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

    ``dataset`` yields (images, labels) batches; features come out in its order.  Progress
    (a bar, plain lines off a terminal) goes to stderr.  Features larger than
    ``IN_MEMORY_LIMIT_BYTES`` are written to ``spill_path`` (a memory-mapped ``.npy``).
    ``forward``: a :func:`compiled_forward` to reuse across calls.
    """
    width = int(np.prod(feature_extractor.output_shape[1:]))
    nbytes = count * width * 4
    if spill_path is not None and nbytes > IN_MEMORY_LIMIT_BYTES:
        Path(spill_path).parent.mkdir(parents=True, exist_ok=True)
        features = np.lib.format.open_memmap(spill_path, mode="w+", dtype="float32", shape=(count, width))
    else:
        features = np.empty((count, width), dtype="float32")
    labels = np.empty((count,), dtype="int32")
    position = 0

    forward = forward or compiled_forward(feature_extractor)
    with ProgressBar(count, f"extracting {description} ({count} images)") as progress:
        for images, batch_labels in dataset:
            batch = forward(images).numpy().reshape(len(images), width)
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
        dataset = dataset.shuffle(len(features), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
