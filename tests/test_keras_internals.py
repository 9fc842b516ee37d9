"""Canaries for the private Keras parts kcnn relies on (keras_cnn.keras_internals) and the Keras
behaviour they work around: a Keras release that changes either fails here, by name."""

from __future__ import annotations

import keras
import numpy as np

from keras_cnn.keras_internals import call_graph_with_training


def inner_model() -> keras.Model:
    inputs = keras.Input((16,))
    return keras.Model(inputs, keras.layers.Dropout(0.5, name="drop")(inputs), name="inner")


def test_keras_replaces_an_inner_training_false_by_the_outer_training_true():
    """Why kcnn's TransferBase exists: base(x, training=False) inside a model still trains under fit."""
    inner = inner_model()
    inputs = keras.Input((16,))
    outer = keras.Model(inputs, inner(inputs, training=False))
    ones = np.ones((4, 16), "float32")
    assert np.asarray(outer(ones, training=False)).min() == 1.0
    assert np.asarray(outer(ones, training=True)).min() == 0.0   # dropout fired despite training=False


def test_call_graph_with_training_gives_each_layer_its_own_value():
    model = inner_model()
    ones = np.ones((4, 16), "float32")
    seen = []

    def training_for(layer):
        seen.append(layer.name)
        return False

    assert np.asarray(call_graph_with_training(model, ones, training_for)).min() == 1.0
    assert seen == ["drop"]
    dropped = np.asarray(call_graph_with_training(model, ones, lambda layer: True))
    assert dropped.min() == 0.0 and dropped.max() == 2.0
