"""A model opened up: its logits and its last spatial feature map, found from its structure.

Calibration needs a model's logits (the probabilities of a confident model round to exactly
0 and 1 in float32, and what was rounded away cannot be rescaled), and Grad-CAM needs its
last spatial feature map and the gradient of a class's logit with respect to it.  Neither
is an output of a kcnn model, and both may lie inside nested models: a from-scratch net is
``Rescaling`` followed by the architecture (a nested Sequential or functional model); a
transfer model's base is a nested functional model (a ``TransferBase``, a keras-hub
backbone's layers inside).

:func:`open_model` rebuilds a model as one flat graph of its own layers (every nested
functional or Sequential model is opened; any other layer, such as a TF Hub module, is kept
whole), so the graph shares the model's weights and computes exactly what it computes, and
gives :class:`OpenedModel`, whose ``graph`` returns a dict:

``output``
    the model's own output (its probabilities);
``penultimate``
    what the output layer takes: :meth:`OpenedModel.logits` turns it into logits (the
    output Dense's affine part without its softmax or sigmoid);
``features``
    the last spatial feature map, when one is reachable (``feature_layer`` names the layer
    that gives it, ``no_feature_map`` says why there is none).

The feature map is found by structure, for any architecture: the last tensor of rank 4 and
more than one pixel on each side that depends on a layer with a weight matrix or filter
bank (a convolution) and through which every path from the image to the output passes;
from there the search steps back over the single-input layers without such weights that
led to it (pooling, dropout, activation, normalisation) and keeps the tensor of the highest
resolution among them, nearest the output: the last convolution's activation map, as
Grad-CAM uses it, before a pooling layer halves it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import keras

from keras_cnn.keras_internals import is_functional, run_graph, trainable_variable_slots

SOFTMAX, SIGMOID, LINEAR = "softmax", "sigmoid", "linear"
SQUASHING = (SOFTMAX, SIGMOID)


@dataclass
class _Call:
    """One layer call of the flat graph: the layer, the symbolic tensors it took and gave."""

    layer: Any
    inputs: list
    outputs: list


@dataclass
class OpenedModel:
    """A model as one flat graph of its own layers (see the module docstring)."""

    graph: keras.Model                  # image -> {"output", "penultimate"[, "features"]}
    output_layer: Any                   # the layer whose output is the model's
    activation: str                     # softmax, sigmoid or linear: how the output follows from the logits
    feature_layer: str | None = None    # the layer whose output is the feature map
    feature_shape: tuple | None = None  # (height, width, channels) of the feature map
    no_feature_map: str | None = None   # why there is none (None when there is one)
    layers_opened: list[str] = field(default_factory=list)   # the nested models opened
    tensors: dict[str, Any] = field(default_factory=dict, repr=False)   # the graph's symbolic image and outputs

    @property
    def has_feature_map(self) -> bool:
        return self.feature_layer is not None

    def logits(self, penultimate):
        """The logits (float32) of ``penultimate`` (the graph's ``"penultimate"`` output).

        For an output Dense with a softmax or sigmoid: ``penultimate @ kernel + bias``; for an
        ``Activation`` layer or a model that already outputs logits: ``penultimate`` itself.
        """
        values = keras.ops.cast(penultimate, "float32")
        layer = self.output_layer
        if self.activation in SQUASHING and isinstance(layer, keras.layers.Dense):
            values = keras.ops.matmul(values, keras.ops.cast(layer.kernel, "float32"))
            if layer.bias is not None:
                values = values + keras.ops.cast(layer.bias, "float32")
        return values


    def calibrated_model(self, temperature: float) -> keras.Model:
        """A Keras model of the same layers whose output is the model's own, from the logits divided by
        ``temperature``: class probabilities of a softmax, the probability of a sigmoid unit (what
        the export writes in every format)."""
        output = TemperatureScaled(self, float(temperature), name="temperature_scaled")(self.tensors["penultimate"])
        return keras.Model(self.tensors["image"], output, name=f"{self.graph.name}_calibrated")


class TemperatureScaled(keras.layers.Layer):
    """The output layer of an opened model on its logits divided by a temperature (weights shared).

    Built for exports only (traced into a SavedModel, ONNX or LiteRT graph), never saved as
    a ``.keras`` file, so it needs no registration.
    """

    def __init__(self, opened: OpenedModel, temperature: float, **kwargs):
        super().__init__(dtype="float32", **kwargs)
        self.output_layer = opened.output_layer   # tracked: the layer's weights are this layer's
        self._opened = opened
        self.temperature = float(temperature)

    def call(self, penultimate):
        scaled = self._opened.logits(penultimate) / self.temperature
        if self._opened.activation == SOFTMAX:
            return keras.ops.softmax(scaled, axis=-1)
        if self._opened.activation == SIGMOID:
            return keras.ops.sigmoid(scaled)
        return scaled


def activation_name(layer: Any) -> str:
    """softmax, sigmoid or linear: the activation a layer applies last (linear for any other)."""
    name = getattr(getattr(layer, "activation", None), "__name__", None)
    return name if name in SQUASHING else LINEAR


def _has_filters(layer: Any) -> bool:
    """Whether a layer holds a weight matrix or a filter bank (Dense, convolutions), trainable now or not."""
    return any(len(variable.shape) >= 2 for variable in trainable_variable_slots(layer))


def _is_spatial(tensor: Any) -> bool:
    shape = getattr(tensor, "shape", None)
    return shape is not None and len(shape) == 4 and all(side is not None and side > 1 for side in shape[1:3])


def _open(layer: Any, args: tuple, kwargs: dict, calls: list[_Call], opened: list[str]) -> Any:
    """Call ``layer`` on symbolic ``args``, opening it when it is a nested model; records every call."""
    if isinstance(layer, keras.Sequential):
        opened.append(layer.name)
        tensor = args[0]
        for inner in layer.layers:
            tensor = _open(inner, (tensor,), {}, calls, opened)
        return tensor
    if is_functional(layer) and len(layer.inputs) == 1:
        opened.append(layer.name)
        # ``training`` of the nested call is left out: the flat graph runs in inference mode.
        return run_graph(layer, args[0], lambda operation, inner_args, inner_kwargs:
                         _open(operation, inner_args, inner_kwargs, calls, opened))
    outputs = layer(*args, **kwargs)
    calls.append(_Call(layer, [tensor for tensor in keras.tree.flatten((args, kwargs))
                               if isinstance(tensor, keras.KerasTensor)], keras.tree.flatten(outputs)))
    return outputs


def open_model(model: keras.Model) -> OpenedModel:
    """Open ``model`` (one image input, one output) into an :class:`OpenedModel`."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"a model with one input and one output is needed, received {len(model.inputs)} "
                         f"input(s) and {len(model.outputs)} output(s)")
    image = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    calls: list[_Call] = []
    opened: list[str] = []
    output = _open(model, (image,), {}, calls, opened)
    if isinstance(output, (list, tuple, dict)):
        output = keras.tree.flatten(output)[0]
    producers = {id(tensor): call for call in calls for tensor in call.outputs}
    output_call = producers[id(output)]
    activation = activation_name(output_call.layer)
    penultimate = output_call.inputs[0] if activation in SQUASHING else output
    outputs = {"output": output, "penultimate": penultimate}
    features, reason = _last_feature_map(calls, producers, image, output)
    result = OpenedModel(graph=None, output_layer=output_call.layer, activation=activation,
                         no_feature_map=reason, layers_opened=opened, tensors={"image": image, **outputs})
    if features is not None:
        outputs["features"] = result.tensors["features"] = features
        result.feature_layer = producers[id(features)].layer.name
        result.feature_shape = tuple(int(side) for side in features.shape[1:])
    result.graph = keras.Model(image, outputs, name=f"{model.name}_opened")
    return result


def _last_feature_map(calls: list[_Call], producers: dict, image, output) -> tuple[Any, str | None]:
    """(the feature map tensor, None) or (None, the reason there is none)."""
    learned: set[int] = set()
    for call in calls:
        if _has_filters(call.layer) or any(id(tensor) in learned for tensor in call.inputs):
            learned.update(id(tensor) for tensor in call.outputs)
    for call in reversed(calls):
        for tensor in call.outputs:
            if _is_spatial(tensor) and id(tensor) in learned and _dominates(tensor, output, image, producers):
                return _sharpest_before(tensor, producers), None
    return None, _why_no_feature_map(calls)


def _dominates(candidate, output, image, producers: dict) -> bool:
    """Whether every path from ``image`` to ``output`` passes through ``candidate``."""
    stack, seen = [output], set()
    while stack:
        tensor = stack.pop()
        if tensor is candidate or id(tensor) in seen:
            continue
        seen.add(id(tensor))
        call = producers.get(id(tensor))
        if call is None:
            if tensor is image:
                return False
            continue
        stack.extend(call.inputs)
    return True


def _sharpest_before(tensor, producers: dict):
    """Step back from ``tensor`` over single-input layers without filters; the highest-resolution
    tensor on the way, nearest the output (the last convolution's map rather than its pooled copy).
    A tensor made larger by its layer (padding) is passed over: its border is not the image's."""
    best, current = None, tensor
    while True:
        call = producers.get(id(current))
        previous = call.inputs[0] if call is not None and len(call.inputs) == 1 else None
        enlarged = previous is not None and _is_spatial(previous) and _pixels(current) > _pixels(previous)
        if not enlarged and (best is None or _pixels(current) > _pixels(best)):
            best = current
        if previous is None or _has_filters(call.layer) or not _is_spatial(previous):
            return best if best is not None else tensor
        current = previous


def _pixels(tensor) -> int:
    return int(tensor.shape[1]) * int(tensor.shape[2])


def _why_no_feature_map(calls: list[_Call]) -> str:
    """A one-line reason: the layer that turns a spatial input into a flat output without being opened."""
    for call in reversed(calls):
        if any(_is_spatial(tensor) for tensor in call.inputs) and not any(_is_spatial(t) for t in call.outputs) \
                and _has_filters(call.layer):
            return (f"the spatial feature map is inside {call.layer.name} ({type(call.layer).__name__}), which is "
                    "not a Keras functional model that can be opened; its output is already pooled")
    return "the model has no spatial feature map after a convolution"
