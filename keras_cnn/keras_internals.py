"""The private parts of Keras that kcnn relies on, in one place.

Keras's public API has no way to do a few things kcnn needs; each such use of a private
attribute or module lives here, in a small function with the reason beside it, and
``tests/test_keras_internals.py`` fails loudly when a Keras release changes one of them.
``setup.cfg`` keeps ``keras`` below its next major version.  Nothing else in kcnn reads a
Keras attribute whose name starts with ``_`` or imports ``keras.src``.

Who uses what: the transfer base's training rule (:func:`call_graph_with_training`); opening
nested models into one graph, for logits and heat maps (:func:`run_graph`); cutting
a model at its frozen boundary (:func:`producer`, :func:`node_inputs`, :func:`node_outputs`,
:func:`node_training`, :func:`is_functional`, :func:`trainable_variable_slots`); the TF Hub
layer (:func:`track_variable`, :func:`trainable_variable_slots`); kill-safe resumption
(:func:`set_initial_epoch`, :func:`initial_epoch`, :func:`set_ema_weights_in_model`); random draws that
are a function of (seed, epoch, batch) (:func:`stateless_seed_generator`); XLA's layer check (:func:`nested_layers`);
per-layer learning rates (:func:`variable_index`); the TF Hub layer's consent rule
(:func:`in_safe_mode`); the ONNX export
(:func:`patch_tf2onnx`); the legacy augmentation engine (:func:`image_data_generator_class`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras


def call_graph_with_training(model: keras.Model, inputs: Any, training_for: Callable[[Any], bool | None]) -> Any:
    """Run a functional ``model`` on ``inputs``, each layer called with ``training=training_for(layer)``.

    What ``Functional.call`` does, but with one ``training`` value per layer instead of the
    caller's value for every layer: Keras 3 replaces each inner layer's recorded
    ``training`` argument by the outer call's (``keras/src/models/functional.py``,
    ``operation_fn``), so a layer called with ``training=False`` inside a model still trains
    when ``fit`` calls the model.  ``training_for`` returning ``None`` leaves the layer to
    Keras's own rule.  Masks are not passed on (image models have none).  Uses
    ``Functional._standardize_inputs`` and ``Functional._run_through_graph``.
    """
    inputs = model._standardize_inputs(inputs)

    def call(operation, args, kwargs):
        # The same test Functional's own operation_fn makes before passing ``training``.
        if "training" in getattr(operation, "_call_context_args", ()):
            value = training_for(operation)
            if value is not None:
                kwargs["training"] = value
        return operation(*args, **kwargs)

    return run_graph(model, inputs, call)


def run_graph(model: keras.Model, inputs: Any, call_operation: Callable[[Any, tuple, dict], Any]) -> Any:
    """Run a functional ``model``'s graph on ``inputs``, each operation computed by ``call_operation``.

    ``call_operation(operation, args, kwargs)`` gets every layer (or operation) of the graph
    in order, with the tensors it takes filled in, and returns its outputs: it may call the
    operation as it is, with other arguments, or replace it (kcnn opens nested models so).
    ``inputs`` may be symbolic (``keras.Input``): the result is then a new graph of the same
    layers.  Uses ``Functional._run_through_graph``, which has no public equivalent.  A
    single output comes back as a tensor, not a list of one.
    """

    def operation_fn(operation):
        return lambda *args, **kwargs: call_operation(operation, args, kwargs)

    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]
    return outputs


# --------------------------------------------------------------------------- functional graphs


def is_functional(model: Any) -> bool:
    """Whether ``model`` is a functional Keras model (a graph of layers that can be walked and cut).

    Keras exports no ``Functional`` class; a functional model keeps its layers by depth in
    ``_nodes_by_depth``, which a subclassed model (or a ``Sequential`` one) has not.
    """
    return isinstance(model, keras.Model) and hasattr(model, "_nodes_by_depth")


def producer(tensor: Any) -> tuple[Any, Any]:
    """(layer, node) that produced a symbolic tensor of a functional model.

    ``tensor._keras_history`` is (operation, node index, tensor index) and the operation's
    ``_inbound_nodes`` are its calls; Keras has no public way from a tensor to its producer.
    """
    operation, node_index, _ = tensor._keras_history
    return operation, operation._inbound_nodes[node_index]


def node_inputs(node: Any) -> list:
    """The symbolic tensors a node (one call of a layer) took."""
    return list(node.input_tensors)


def node_outputs(node: Any) -> list:
    """The symbolic tensors a node gave."""
    return list(node.outputs)


def node_training(node: Any) -> bool | None:
    """The ``training`` argument the layer was called with in this node (``None``: not given)."""
    return node.arguments.kwargs.get("training")


def trainable_variable_slots(layer: Any) -> list:
    """The variables ``layer`` trains when it is trainable, whether or not it is frozen now.

    Keras keeps them in ``_trainable_variables`` (``layer.trainable_weights`` is empty while
    the layer is frozen), which is what tells a frozen layer with weights from one without.
    """
    return list(getattr(layer, "_trainable_variables", None) or [])


def track_variable(layer: Any, variable: Any) -> None:
    """Make an existing ``keras.Variable`` one of ``layer``'s weights (``add_weight`` makes new ones)."""
    layer._track_variable(variable)


def nested_layers(model: Any) -> list:
    """Every layer inside ``model``, nested ones included, ``model`` itself first."""
    return list(model._flatten_layers())


# --------------------------------------------------------------------------- training


def set_initial_epoch(model: Any, epoch: int) -> None:
    """Make the next ``model.fit`` start at ``epoch`` (0-based) whatever its ``initial_epoch`` argument.

    ``fit`` reads ``model._initial_epoch`` (set by ``BackupAndRestore``) before its own
    argument; kcnn's checkpoint callback restores a stage the same way.
    """
    model._initial_epoch = epoch


def initial_epoch(model: Any) -> int | None:
    """The epoch :func:`set_initial_epoch` (or ``BackupAndRestore``) asked the next fit to start at."""
    return getattr(model, "_initial_epoch", None)


def set_ema_weights_in_model(callback: Any, swapped: bool) -> None:
    """Tell a ``SwapEMAWeights`` callback whether the averaged weights are in the model now.

    It keeps that in ``_ema_weights_in_model`` and swaps the other way at the next epoch; a
    resumed fit starts from a state saved with the average swapped in, which it cannot know.
    """
    callback._ema_weights_in_model = bool(swapped)


class _StatelessSeedGenerator(keras.random.SeedGenerator):
    """See :func:`stateless_seed_generator`."""

    def __init__(self, seed: Any):   # SeedGenerator.__init__ would create the state variable
        self.name = "stateless_seed_generator"
        self.seed = seed
        self.draws = 0

    def next(self, ordered=True):
        import tensorflow as tf

        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.seed, self.draws)


def stateless_seed_generator(seed: Any) -> keras.random.SeedGenerator:
    """A ``keras.random.SeedGenerator`` whose k-th draw is ``stateless_fold_in(seed, k)``: no state at all.

    Keras's random functions take an int or a ``SeedGenerator`` (``draw_seed`` checks the
    class and calls ``next()``), not a seed tensor; a random layer's
    ``get_random_transformation(data, seed=...)`` hands ``seed`` to them.  A real
    ``SeedGenerator`` keeps its state in a variable, which a tf.data function cannot create
    and parallel calls would share, so this one skips ``SeedGenerator.__init__`` and derives
    each draw from ``seed`` (an int64 tensor of shape [2]) and the draw's position in the
    traced call.
    """
    return _StatelessSeedGenerator(seed)


def variable_index(optimizer: Any, variable: Any) -> int:
    """The position of a (backend) variable among the optimizer's variables, as ``update_step`` sees it.

    ``update_step`` gets the backend variable, which has no Keras path; the optimizer's own
    index is the bridge to the Keras variable (and its per-variable learning rate).
    """
    return optimizer._get_variable_index(variable)


# --------------------------------------------------------------------------- modules only under keras.src


def patch_tf2onnx() -> None:
    """Keras's numpy-2 compatibility shim for tf2onnx (what ``model.export(format="onnx")`` applies)."""
    try:
        from keras.src.export.tf2onnx_lib import patch_tf2onnx as patch
    except ImportError:  # a Keras without the shim: tf2onnx is assumed to work as it is
        return
    patch()


def image_data_generator_class() -> type:
    """Keras 2's ``ImageDataGenerator``, kept by Keras 3 as a legacy class outside its public API.

    ``tf.keras.preprocessing.image.ImageDataGenerator`` is this class too; ``tf_keras``
    (Keras 2) has it when a future Keras drops the legacy module.
    """
    try:
        from keras.src.legacy.preprocessing.image import ImageDataGenerator
    except ImportError:
        from tf_keras.preprocessing.image import ImageDataGenerator
    return ImageDataGenerator


def in_safe_mode() -> bool | None:
    """Whether Keras is deserializing in safe mode right now (``None`` outside any loading).

    Keras has no public accessor; a layer's ``from_config`` that loads code of its own (the
    TF Hub layer) reads it to honour ``safe_mode``.  Uses
    ``keras.src.saving.serialization_lib.in_safe_mode``.
    """
    from keras.src.saving import serialization_lib

    return serialization_lib.in_safe_mode()
