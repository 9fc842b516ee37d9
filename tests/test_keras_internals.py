"""Canaries for the private Keras parts kcnn relies on (keras_cnn.keras_internals) and the Keras
behaviour they work around: a Keras release that changes either fails here, by name."""

from __future__ import annotations

import keras
import numpy as np

from keras_cnn.keras_internals import call_graph_with_training, run_graph


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


def test_run_graph_calls_every_operation_through_the_caller_and_builds_a_new_graph_on_symbolic_inputs():
    """What opening nested models relies on: each node's operation, its tensors filled in, in order."""
    inputs = keras.Input((3,))
    first, second = keras.layers.Dense(2, name="first"), keras.layers.Dense(2, name="second")
    model = keras.Model(inputs, keras.layers.Add(name="add")([first(inputs), second(inputs)]))
    seen = []

    def call(operation, args, kwargs):
        seen.append(operation.name)
        return operation(*args, **kwargs)

    values = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_allclose(np.asarray(run_graph(model, values, call)), np.asarray(model(values)), atol=1e-6)
    assert sorted(seen[:2]) == ["first", "second"] and seen[2] == "add"
    fresh = keras.Input((3,))
    rebuilt = keras.Model(fresh, run_graph(model, fresh, call))     # the same layers: shared weights
    assert rebuilt.get_layer("first") is first
    np.testing.assert_allclose(np.asarray(rebuilt(values)), np.asarray(model(values)), atol=1e-6)


# --------------------------------------------------------------------------- walking a functional graph


def dense_then_dropout():
    inputs = keras.Input((4,), name="x")
    dense, drop = keras.layers.Dense(3, name="dense"), keras.layers.Dropout(0.5, name="drop")
    hidden = dense(inputs)
    return keras.Model(inputs, drop(hidden, training=False)), dense, drop, hidden


def test_graph_walk_finds_each_tensors_layer_call_and_training_argument():
    from keras_cnn.keras_internals import is_functional, node_inputs, node_outputs, node_training, producer

    model, dense, drop, hidden = dense_then_dropout()
    layer, node = producer(model.outputs[0])
    assert layer is drop and node_training(node) is False
    assert node_inputs(node)[0] is hidden and node_outputs(node)[0] is model.outputs[0]
    layer, node = producer(hidden)
    assert layer is dense and node_training(node) is None and node_inputs(node)[0] is model.inputs[0]

    class Subclassed(keras.Model):
        def call(self, inputs):
            return inputs

    assert is_functional(model) and not is_functional(Subclassed()) and not is_functional(dense)


def test_trainable_variable_slots_outlive_freezing():
    from keras_cnn.keras_internals import trainable_variable_slots

    dense = keras.layers.Dense(2)
    dense.build((None, 3))
    dense.trainable = False
    assert dense.trainable_weights == []
    assert {id(variable) for variable in trainable_variable_slots(dense)} == {id(dense.kernel), id(dense.bias)}
    assert trainable_variable_slots(keras.layers.Rescaling(2.0)) == []


def test_track_variable_makes_an_existing_variable_a_weight_and_nested_layers_reach_inside():
    from keras_cnn.keras_internals import nested_layers, track_variable

    layer = keras.layers.Layer()
    variable = keras.Variable(np.ones(2, "float32"), name="held")
    track_variable(layer, variable)
    assert [id(weight) for weight in layer.weights] == [id(variable)]
    outer = keras.Sequential([keras.Input((16,)), inner_model()])
    assert {"inner", "drop"} <= {nested.name for nested in nested_layers(outer)}


# --------------------------------------------------------------------------- training


def test_fit_starts_at_the_epoch_a_callback_sets_at_train_begin():
    from keras_cnn.keras_internals import initial_epoch, set_initial_epoch

    class StartAtTwo(keras.callbacks.Callback):   # what kcnn's checkpoint does when a stage resumes
        def on_train_begin(self, logs=None):
            set_initial_epoch(self.model, 2)

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    epochs = []
    model.fit(np.ones((4, 2), "float32"), np.ones((4, 1), "float32"), epochs=4, verbose=0,
              callbacks=[StartAtTwo(), keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, _: epochs.append(epoch))])
    assert epochs == [2, 3] and initial_epoch(model) == 2


def test_swap_ema_weights_keeps_the_state_kcnn_sets_on_resume():
    from keras_cnn.keras_internals import set_ema_weights_in_model

    callback = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    assert callback._ema_weights_in_model is False   # the attribute set_ema_weights_in_model writes
    set_ema_weights_in_model(callback, True)
    assert callback._ema_weights_in_model is True


def test_variable_index_is_the_position_among_the_optimizers_variables():
    from keras_cnn.keras_internals import variable_index

    first, second = keras.Variable(1.0, name="first"), keras.Variable(2.0, name="second")
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build([first, second])
    assert variable_index(optimizer, first) == 0 and variable_index(optimizer, second) == 1


# --------------------------------------------------------------------------- modules under keras.src


def test_the_tf2onnx_shim_and_the_legacy_image_generator_are_where_kcnn_takes_them():
    import importlib.util

    from keras_cnn.keras_internals import image_data_generator_class, patch_tf2onnx

    assert importlib.util.find_spec("keras.src.export.tf2onnx_lib") is not None
    patch_tf2onnx()
    generator = image_data_generator_class()(horizontal_flip=True)
    images, labels = next(generator.flow(np.zeros((2, 8, 8, 3), "float32"), np.array([0, 1]), batch_size=2))
    assert images.shape == (2, 8, 8, 3) and sorted(labels.tolist()) == [0, 1]


def test_keras_is_kept_below_its_next_major_version():
    """The private parts above may change in any release; a major one is not taken on untested."""
    import configparser
    from pathlib import Path

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    requirement = next(line.strip() for line in setup["options"]["install_requires"].splitlines()
                       if line.strip().startswith("keras"))
    assert requirement.replace(" ", "") == f"keras>=3.15,<{int(keras.__version__.split('.')[0]) + 1}"
