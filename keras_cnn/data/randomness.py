"""Every random draw of an input pipeline is a function of (seed, epoch, batch): a resumed run is the same run.

tf.data's ``shuffle(reshuffle_each_iteration=True)`` and Keras's random layers keep their
state inside the dataset and the layers.  A new process starts that state over, so a run
resumed at epoch 3 would see epoch 1's order and augmentations again; and random layers
mapped in parallel advance one shared state in whatever order the batches happen to run,
so not even an uninterrupted run repeats.  Here instead:

- each random step of a pipeline counts the passes made over it (epochs); the training
  loop says which epoch comes next with :func:`set_epoch` (kcnn's stages do it at the start
  of every epoch, so a run resumed at epoch 3 gets epoch 3's draws), and without it every
  pass counts on by itself, so a loop of your own still reshuffles every epoch;
- :func:`shuffle_per_epoch` shuffles with a seed made of (seed, epoch);
- :func:`map_with_batch_seeds` gives every batch its own seed made of (seed, epoch, batch
  index), and :func:`apply_random_layer` makes a Keras random preprocessing layer draw from
  that seed alone (stateless), whatever order parallel calls run in;
- :class:`SeededFlow` does the same for the legacy ``ImageDataGenerator.flow``.

Without a seed (``seed=None``) nothing here is used: tf.data and the layers draw as they
always did, differently in every run.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

# Streams: the same seed drives the shuffle and each kind of per-batch draw differently.
SHUFFLE_STREAM = 1
AUGMENTATION_STREAM = 2
REGULARIZATION_STREAM = 3

_PASS_COUNTERS: list[weakref.ref] = []   # the epoch counters (tf.Variable or _PythonCounter) alive in this process


def set_epoch(epoch: int) -> None:
    """Make the next pass over every pipeline of this process epoch ``epoch`` (0-based); later passes count on.

    kcnn's training stages call it at the start of every epoch.  Call it yourself in a
    training loop of your own to get an epoch's draws again (as PyTorch's
    ``DistributedSampler.set_epoch``).
    """
    alive = []
    for reference in _PASS_COUNTERS:
        counter = reference()
        if counter is not None:
            counter.assign(int(epoch))
            alive.append(reference)
    _PASS_COUNTERS[:] = alive


def _epoch_counter() -> tf.Variable:
    # The dataset's functions keep the variable alive exactly as long as the dataset.
    with tf.init_scope():
        counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="pipeline_epoch")
    _PASS_COUNTERS.append(weakref.ref(counter))
    return counter


def per_epoch(dataset_of_epoch: Callable[[tf.Tensor], tf.data.Dataset], cardinality: int | None = None
              ) -> tf.data.Dataset:
    """A dataset whose every pass is ``dataset_of_epoch(epoch)``, ``epoch`` an int64 scalar counting the passes.

    ``cardinality``: the number of elements of one pass, when known (kept for Keras's
    progress bars and schedules, which a ``flat_map`` would otherwise hide).
    """
    counter = _epoch_counter()

    def start_pass(_):
        return counter.assign_add(1) - 1   # this pass's number; the next pass gets the following one

    dataset = tf.data.Dataset.range(1).map(start_pass).flat_map(dataset_of_epoch)
    if cardinality is not None and cardinality >= 0:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(cardinality))
    return dataset


def epoch_seed(seed: int, stream: int, epoch: tf.Tensor) -> tf.Tensor:
    """A stateless seed (int64, shape [2]) of (seed, stream, epoch)."""
    return tf.random.experimental.stateless_fold_in(tf.constant([int(seed), stream], tf.int64),
                                                    tf.cast(epoch, tf.int64))


# TensorFlow reduces seeds modulo this (tensorflow/python/framework/random_seed.py).
_MAX_INT32 = 2**31 - 1


def shuffle_per_epoch(dataset: tf.data.Dataset, buffer_size: int, seed: int) -> tf.data.Dataset:
    """``dataset.shuffle(buffer_size)`` in an order that is a function of (seed, epoch) alone.

    Two datasets of the same length shuffled with the same seed and buffer take the same
    order every epoch (cached features are shuffled exactly like the images they came from).
    """
    def one_epoch(epoch):
        order_seed = tf.random.stateless_uniform([], seed=epoch_seed(seed, SHUFFLE_STREAM, epoch),
                                                 minval=None, maxval=None, dtype=tf.int64)
        graph = tf.compat.v1.get_default_graph()
        if graph.seed is not None and graph.seed % _MAX_INT32 == 0:
            # After tf.random.set_seed(0) (--seed 0), shuffle's seed check asks whether
            # (0, order_seed) == (0, 0), which a traced tensor cannot answer.  The graph seed of
            # this pass's function alone becomes 1: the order is still a function of (seed, epoch).
            graph.seed = 1
        return dataset.shuffle(buffer_size, seed=order_seed, reshuffle_each_iteration=False)

    return per_epoch(one_epoch, int(dataset.cardinality()))


def map_with_batch_seeds(dataset: tf.data.Dataset, function: Callable[..., Any], seed: int, stream: int
                         ) -> tf.data.Dataset:
    """``dataset.map(lambda *element: function(batch_seed, *element))``, in parallel.

    ``batch_seed`` (int64, shape [2]) is a function of (seed, stream, epoch, the element's
    position in the pass): whatever order the parallel calls run in, every element gets the
    same draws in every run.
    """
    def one_epoch(epoch):
        base = epoch_seed(seed, stream, epoch)
        return dataset.enumerate().map(
            lambda index, element: function(tf.random.experimental.stateless_fold_in(base, index), *element),
            num_parallel_calls=tf.data.AUTOTUNE)

    return per_epoch(one_epoch, int(dataset.cardinality()))


def sub_seed(seed: tf.Tensor | None, site: int) -> tf.Tensor | None:
    """A seed of its own for one random step (``site``) of a batch whose seed is ``seed`` (None stays None)."""
    return None if seed is None else tf.random.experimental.stateless_fold_in(seed, site)


def uniform(shape, seed: tf.Tensor | None, minval=0, maxval=None, dtype=tf.float32, op_seed: int | None = None):
    """``tf.random.uniform`` drawn from the batch seed ``seed`` (stateless), or with ``op_seed`` when it is None."""
    if seed is None:
        return tf.random.uniform(shape, minval, maxval, dtype=dtype, seed=op_seed)
    return tf.random.stateless_uniform(shape, seed=seed, minval=minval, maxval=maxval, dtype=dtype)


def apply_random_layer(layer, data, seed: tf.Tensor | None):
    """``layer(data, training=True)`` for a Keras random preprocessing layer, drawing from ``seed`` only.

    ``data``: a batch of images, or ``{"images": ..., "labels": ...}`` for layers that mix
    labels too (MixUp, CutMix).  The layer's own seed generator is not used (it would be one
    state shared by parallel calls); every draw the layer makes comes from ``seed``.
    ``seed`` None: the layer draws from its own generator, as a plain call does.
    """
    from keras_cnn.keras_internals import stateless_seed_generator

    if seed is None:
        return layer(data, training=True)

    def as_input(values):
        return tf.cast(values, layer.compute_dtype)

    images = as_input(data["images"] if isinstance(data, dict) else data)
    inputs = {**data, "images": images} if isinstance(data, dict) else images
    transformation = layer.get_random_transformation(inputs, training=True, seed=stateless_seed_generator(seed))
    transformed = layer.transform_images(images, transformation=transformation, training=True)
    if not isinstance(data, dict):
        return transformed
    labels = layer.transform_labels(as_input(data["labels"]), transformation=transformation, training=True)
    return {"images": transformed, "labels": labels}


class _PythonCounter:
    """An epoch counter for a Python data source (what :func:`set_epoch` assigns)."""

    def __init__(self):
        self.value = 0

    def assign(self, value: int) -> None:
        self.value = int(value)


class SeededFlow(keras.utils.PyDataset):
    """The batches of a legacy ``ImageDataGenerator.flow(..., shuffle=True, seed=seed)``, drawn from (seed, epoch).

    The legacy iterator reseeds numpy with ``seed + batches seen`` before each batch (its
    random transformations come from numpy) and takes each epoch's order from numpy's
    global state.  Here both are set before each batch from the epoch (counted like a
    pipeline's passes, :func:`set_epoch`) and the batch's index, so the batches of an epoch
    are the same in every run, in a resumed one too.  Batches are made one at a time.
    """

    def __init__(self, flow, seed: int):
        super().__init__()
        self.flow, self.seed = flow, int(seed)
        self.epoch = _PythonCounter()
        _PASS_COUNTERS.append(weakref.ref(self.epoch))
        self._order_epoch: int | None = None

    def __len__(self) -> int:
        return len(self.flow)

    def __getitem__(self, index: int):
        flow, epoch = self.flow, self.epoch.value
        if self._order_epoch != epoch:
            flow.index_array = np.random.RandomState([self.seed, epoch]).permutation(flow.n)
            self._order_epoch = epoch
        flow.total_batches_seen = epoch * len(flow) + index
        return flow[index]

    def on_epoch_end(self) -> None:
        self.epoch.value += 1
