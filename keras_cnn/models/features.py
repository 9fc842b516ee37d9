"""Features of a model for every image: one inference pass over a dataset.

Stage 1 of transfer learning trains its head on the pooled output of the frozen base
(:mod:`keras_cnn.train.features`), fine-tuning on the frozen layers' output, and ``kcnn
doctor`` compares images and predicts their labels out of sample from the same kind of
vectors, so the pass lives here, below both.  :func:`penultimate_model` cuts a trained
classifier before its last layer (``kcnn doctor --run``).
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

    ``dataset`` yields (images, labels) batches; features come out in its order, one row of
    the extractor's output shape per image (pooled vectors, or a boundary tensor of a
    partly frozen base).  Labels are class indices (int32), or rows of float targets
    (multi-label data: multi-hot rows) kept as they come.  Progress (a bar, plain lines
    off a terminal) goes to stderr.  Features larger than ``IN_MEMORY_LIMIT_BYTES`` are
    written to ``spill_path`` (a memory-mapped ``.npy``).
    ``forward``: a :func:`compiled_forward` to reuse across calls.
    """
    shape = tuple(int(size) for size in feature_extractor.output_shape[1:])
    nbytes = count * int(np.prod(shape)) * 4
    if spill_path is not None and nbytes > IN_MEMORY_LIMIT_BYTES:
        Path(spill_path).parent.mkdir(parents=True, exist_ok=True)
        features = np.lib.format.open_memmap(spill_path, mode="w+", dtype="float32", shape=(count, *shape))
    else:
        features = np.empty((count, *shape), dtype="float32")
    labels = None
    position = 0

    forward = forward or compiled_forward(feature_extractor)
    with ProgressBar(count, f"extracting {description} ({count} images)") as progress:
        for images, batch_labels in dataset:
            # The signature takes float32; the pipelines give uint8 unless augmented.
            batch = forward(tf.cast(images, tf.float32)).numpy().reshape(len(images), *shape)
            features[position:position + len(batch)] = batch
            batch_labels = np.asarray(batch_labels)
            if labels is None:   # class indices [B] -> int32 [count]; target rows [B, N] -> float32 [count, N]
                rows = batch_labels.ndim == 2 and batch_labels.dtype.kind == "f"
                labels = (np.empty((count, batch_labels.shape[1]), "float32") if rows
                          else np.empty((count,), dtype="int32"))
            labels[position:position + len(batch)] = batch_labels.reshape(len(batch), *labels.shape[1:])
            position += len(batch)
            progress.update(position)
    if labels is None:
        labels = np.empty((0,), dtype="int32")
    if position != count:
        features, labels = features[:position], labels[:position]
    return features, labels


def penultimate_model(model: keras.Model) -> keras.Model:
    """A model from ``model``'s input to the input of its last layer (the classifier's features).

    kcnn's models are chains: a transfer model ends in its ``predictions`` layer, a
    from-scratch one is the reference network nested behind an input-scaling layer, so a
    nested last layer is cut the same way, recursively.  The layers are shared, not copied.
    """
    last = model.layers[-1]
    if not isinstance(last, keras.Model):
        return keras.Model(model.inputs, last.input, name=f"{model.name}_penultimate")
    inner = penultimate_model(last)
    inputs = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    outputs = inputs
    for layer in model.layers[:-1]:
        if not isinstance(layer, keras.layers.InputLayer):
            outputs = layer(outputs)
    return keras.Model(inputs, inner(outputs), name=f"{model.name}_penultimate")
