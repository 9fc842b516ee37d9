"""Cut a partly unfrozen transfer model at its frozen boundary, for caching the frozen part.

During fine-tuning without augmentation, the frozen layers below the unfreeze point compute
the same output for an image every epoch.  If everything the trainable part needs from them
is ONE tensor (the output of an EfficientNet block, an InceptionV3 ``mixedN``, a VGG block,
a ResNet stage, a MobileNet block), that tensor can be computed once per image and the
trainable part can train on it alone::

    whole model:  image -> preprocessing -> base[frozen bottom | trainable top] -> head
    bottom:       image -> preprocessing -> base bottom                  -> boundary tensor
    top:          boundary tensor ->                 base top -> head    -> output

Both parts are built from the whole model's own layers, so they share its weights: training
the top trains the whole model, which stays the thing that is saved and exported.  Both keep
the base's rule for ``training`` (:class:`~keras_cnn.models.frozen.TransferBase`): the frozen
layers run in inference mode in the whole model too, so computing them once is exact.

The frozen part is found from the layers' ``trainable`` flags (set them first, e.g. with
:func:`keras_cnn.models.transfer.unfreeze_from`): a layer belongs to the bottom when it has
no trainable weights and all of its inputs come from the bottom.  Where the top needs more
than one tensor of the bottom (a residual connection that jumps over the unfreeze point,
a branch that starts below it), :func:`cut_at_frozen_boundary` raises
:class:`NoSingleBoundary` with a one-line reason, and the caller trains the whole model.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from keras_cnn.keras_internals import (is_functional, node_inputs, node_outputs, node_training, producer,
                                       trainable_variable_slots)
from keras_cnn.models.frozen import TransferBase, acts_only_in_training, sub_base
from keras_cnn.models.transfer import get_base_layer


class NoSingleBoundary(ValueError):
    """The frozen part of a model cannot be cut off as one tensor; the message says why."""


@dataclass
class FrozenCut:
    """The two halves of a model, sharing its weights: ``top(bottom(x)) == model(x)``."""

    bottom: keras.Model      # image -> boundary tensor; frozen, always in inference mode
    top: keras.Model         # boundary tensor -> the model's output; holds every trainable weight
    boundary_layer: str      # the base layer whose output is the boundary tensor
    boundary_shape: tuple    # shape of one image's boundary tensor

    @property
    def bytes_per_image(self) -> int:
        """float32 bytes of one image's boundary tensor (what a cache holds per image)."""
        return int(np.prod(self.boundary_shape)) * 4


def cut_at_frozen_boundary(model: keras.Model) -> FrozenCut:
    """Cut a kcnn transfer model between its frozen bottom and its trainable top.

    ``model``: image -> layers without trainable weights (preprocessing) -> a nested base
    (a functional Keras model, partly unfrozen) -> head layers, a chain as
    :func:`keras_cnn.models.transfer.build_transfer_model` builds it.  Raises
    :class:`NoSingleBoundary` when the top needs more than one tensor of the bottom, when
    nothing is frozen, or when the model has another shape.
    """
    base = get_base_layer(model)
    chain = _model_chain(model)
    position = next((index for index, (layer, _training) in enumerate(chain) if layer is base), None)
    if position is None:
        raise NoSingleBoundary(f"the base {base.name} is not on the main path of {model.name}")
    before, (_, base_training), after = chain[:position], chain[position], chain[position + 1:]
    for layer, _training in before:
        if layer.trainable_weights:
            raise NoSingleBoundary(f"layer {layer.name} before the base has trainable weights")
    if not is_functional(base):
        raise NoSingleBoundary(f"the base {base.name} is not a functional Keras model (a hub module "
                               "or a subclassed model cannot be cut)")
    if len(base.inputs) != 1 or len(base.outputs) != 1:
        raise NoSingleBoundary(f"the base {base.name} has several inputs or outputs")

    boundary = _single_boundary_tensor(base)
    bottom_layers = _bottom_layers(base, boundary)
    # A bottom without any variable it could train (only rescaling/normalisation) saves no work.
    if not any(trainable_variable_slots(layer) for layer in bottom_layers):
        raise NoSingleBoundary(f"nothing trainable in the base {base.name} is frozen")
    boundary_layer, _ = producer(boundary)
    if not isinstance(base, TransferBase):
        # Decided by what the frozen layers will do, not by a recorded training=False (Keras 3
        # replaces it by fit's training=True): a plain functional base runs dropout in its
        # frozen part while training, which a cache of one pass cannot reproduce.
        noisy = [layer.name for layer in bottom_layers if acts_only_in_training(layer)]
        if noisy:
            raise NoSingleBoundary(f"the frozen part of {base.name} would run in training mode while fitting "
                                   f"and acts differently there ({noisy[0]})")
        base_bottom = keras.Model(base.inputs[0], boundary, name=f"{base.name}_bottom")
        base_top = keras.Model(boundary, base.outputs[0], name=f"{base.name}_top")
    else:
        base_bottom = sub_base(base, base.inputs[0], boundary, name=f"{base.name}_bottom")
        base_top = sub_base(base, boundary, base.outputs[0], name=f"{base.name}_top")

    image = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    features = image
    for layer, training in before:
        features = _call(layer, features, training)
    bottom = keras.Model(image, base_bottom(features, training=False), name=f"{model.name}_bottom")

    boundary_input = keras.Input(shape=tuple(boundary.shape[1:]), name="boundary")
    outputs = _call(base_top, boundary_input, base_training)
    for layer, training in after:
        outputs = _call(layer, outputs, training)
    top = keras.Model(boundary_input, outputs, name=f"{model.name}_top")
    return FrozenCut(bottom=bottom, top=top, boundary_layer=boundary_layer.name,
                     boundary_shape=tuple(int(size) for size in boundary.shape[1:]))


def _call(layer, tensor, training):
    """Call ``layer`` as the whole model called it (``training`` forced only where it was)."""
    return layer(tensor) if training is None else layer(tensor, training=training)


def _model_chain(model: keras.Model) -> list[tuple[keras.layers.Layer, bool | None]]:
    """The model's layers from input to output, each with the ``training`` it was called with.

    Refuses a model that is not a single chain (each layer taking the previous one's output).
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise NoSingleBoundary(f"{model.name} has several inputs or outputs")
    chain = []
    tensor = model.outputs[0]
    while tensor is not model.inputs[0]:
        layer, node = producer(tensor)
        if isinstance(layer, keras.layers.InputLayer):
            break
        if len(node_inputs(node)) != 1:
            raise NoSingleBoundary(f"layer {layer.name} of {model.name} takes several inputs")
        chain.append((layer, node_training(node)))
        tensor = node_inputs(node)[0]
    return chain[::-1]


def _graph_nodes(base: keras.Model):
    """Every (layer, node) of the base's graph, each after the nodes that feed it."""
    order, done = [], set()
    stack = [(*producer(tensor), False) for tensor in base.outputs]
    while stack:
        layer, node, inputs_done = stack.pop()
        if id(node) in done:
            continue
        if inputs_done:
            done.add(id(node))
            order.append((layer, node))
            continue
        stack.append((layer, node, True))
        for source in node_inputs(node):
            source_layer, source_node = producer(source)
            if id(source_node) not in done:
                stack.append((source_layer, source_node, False))
    return order


def _frozen_tensor_ids(base: keras.Model) -> set[int]:
    """ids of the base's tensors that depend on no trainable weight."""
    frozen = {id(tensor) for tensor in base.inputs}
    for layer, node in _graph_nodes(base):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        # A graph may hold plain operations (keras.ops calls, as in ConvNeXt): no weights.
        if not getattr(layer, "trainable_weights", None) and node_inputs(node) and all(
                id(source) in frozen for source in node_inputs(node)):
            frozen.update(id(output) for output in node_outputs(node))
    return frozen


def _boundary_tensors(nodes, frozen: set[int], base: keras.Model) -> dict[int, object]:
    """Frozen tensors that a trainable node or the base's output reads, by id."""
    boundary: dict[int, object] = {}
    for layer, node in nodes:
        if isinstance(layer, keras.layers.InputLayer) or all(id(output) in frozen for output in node_outputs(node)):
            continue
        for source in node_inputs(node):
            if id(source) in frozen:
                boundary[id(source)] = source
    for output in base.outputs:
        if id(output) in frozen:
            boundary[id(output)] = output
    return boundary


def _single_boundary_tensor(base: keras.Model):
    """The frozen tensor nearest the trainable part through which all of its inputs pass.

    When the trainable part reads one frozen tensor, that is it.  Otherwise (DenseNet's
    ``conv5_block1`` reads both ``pool4_pool`` and a frozen BatchNorm + ReLU of it;
    InceptionV3's next block reads ``mixed8`` and an average pooling of it; a residual
    shortcut jumps over the unfreeze point) it is the nearest frozen tensor that every path
    from the image to the trainable part goes through, and the frozen layers between it and
    the trainable part are recomputed with the top: still exact, as frozen layers run in
    inference mode.  The base's input always qualifies, so this finds a tensor; whether
    anything worth caching lies below it is the caller's question.
    """
    nodes = _graph_nodes(base)
    frozen = _frozen_tensor_ids(base)
    boundary = _boundary_tensors(nodes, frozen, base)
    if len(boundary) == 1:
        return next(iter(boundary.values()))
    trainable_nodes = {id(node) for layer, node in nodes if not isinstance(layer, keras.layers.InputLayer)
                       and not all(id(output) in frozen for output in node_outputs(node))}
    for _layer, node in reversed(nodes):
        for output in node_outputs(node):
            if id(output) in frozen and _dominates(output, nodes, base, trainable_nodes):
                return output
    raise NoSingleBoundary(f"no single tensor of {base.name} leads to its trainable part")


def _dominates(candidate, nodes, base: keras.Model, trainable_nodes: set[int]) -> bool:
    """Whether every path from the base's input to a trainable node passes through ``candidate``."""
    reachable = {id(tensor) for tensor in base.inputs if tensor is not candidate}
    for layer, node in nodes:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if any(id(source) in reachable for source in node_inputs(node)):
            if id(node) in trainable_nodes:
                return False
            reachable.update(id(output) for output in node_outputs(node) if output is not candidate)
    return True


def _bottom_layers(base: keras.Model, boundary) -> list[keras.layers.Layer]:
    if boundary is base.inputs[0]:
        return []
    bottom = keras.Model(base.inputs[0], boundary)
    return [layer for layer in bottom.layers if not isinstance(layer, keras.layers.InputLayer)]

