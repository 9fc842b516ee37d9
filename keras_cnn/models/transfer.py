"""Transfer models: a frozen pretrained base plus a new classification head.

The model (functional API, the default)::

    image (float 0..255) -> preprocessing -> BASE -> head_pool
        -> head_dense_1 ... (relu) -> head_dropout -> predictions (softmax; sigmoid for --binary, and one
                                                                    sigmoid per label for --multi-label)

The base is a :class:`~keras_cnn.models.frozen.TransferBase`: its frozen layers run in
inference mode whatever ``training`` the model is called with (``fit`` calls it with
``training=True``, which in Keras 3 would otherwise reach every layer of the base, dropout and
stochastic depth included).  ``api="sequential"`` puts the same layers in a
``keras.Sequential`` (as the TF Hub recipe built its TF Hub model); the base keeps the same
rule there.

Layer names are stable so later stages find their parts: the base is named by its spec (``efficientnet_b0``, ``hub_base`` ...), the head layers ``head_pool``,
``head_dense_N``, ``head_dropout`` and ``predictions``.

Stage 1 trains the head with the base frozen (:func:`cut_at_features` lets it train on
cached pooled features); stage 2 calls :func:`unfreeze_from` and recompiles.
BatchNorm layers stay frozen in stage 2 unless asked: with a small dataset their batch
statistics are noisy and would wreck the pretrained ones (Keras transfer-learning guide).
Dropout and stochastic depth in the unfrozen layers act while training only with
``base_dropout`` (``kcnn finetune --base-dropout``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras

from keras_cnn.errors import UserError
from keras_cnn.messages import did_you_mean
from keras_cnn.models.bases import build_base, get_base_spec
from keras_cnn.models.frozen import TransferBase, as_transfer_base
from keras_cnn.models.hub import HubFeatureLayer
from keras_cnn.models.parameters import parameter_counts
from keras_cnn.models.preprocessing import preprocessing_for
from keras_cnn.models.scratch import multi_label_output
from keras_cnn.models.specs import BaseSpec, check_api
HEAD_POOL = "head_pool"
HEAD_DROPOUT = "head_dropout"
PREDICTIONS = "predictions"
UNFREEZE_ALL = "all"


def head_dense_name(index: int) -> str:
    """Name of the ``index``-th (1-based) hidden Dense layer of the head."""
    return f"head_dense_{index}"


def build_transfer_model(base: str | BaseSpec, num_classes: int, image_size: int | tuple[int, int] | None = None,
                         weights: str | os.PathLike | None = "imagenet", head_units: Sequence[int] = (),
                         dropout: float = 0.2, binary: bool = False, api: str = "functional",
                         seed: int | None = None, multi_label: bool = False) -> keras.Model:
    """Frozen base ``base`` + new head for ``num_classes`` classes.

    Input: float32 pixels 0..255 of shape (h, w, 3), ``image_size`` defaulting to the
    base's own.  ``binary=True`` (only with two classes) gives one sigmoid unit instead of
    a two-way softmax; ``multi_label=True`` one sigmoid unit per label (any number of
    labels per image).  The output layer computes in float32 so mixed precision is safe.
    """
    spec = get_base_spec(base)
    if multi_label and binary:
        raise UserError("--binary and --multi-label exclude each other: multi-label has one sigmoid per label")
    num_classes = _check_num_classes(num_classes, binary, multi_label)
    check_api(api)
    if not 0.0 <= float(dropout) < 1.0:
        raise UserError(f"dropout must be in [0, 1), received: {dropout!r}")
    head_units = [int(units) for units in head_units or ()]
    if any(units <= 0 for units in head_units):
        raise UserError(f"head units must be positive, received: {head_units}")

    input_shape = spec.input_shape(image_size)
    base_model = as_transfer_base(build_base(spec, input_shape[:2], weights))
    base_model.trainable = False
    preprocessing = preprocessing_for(spec)
    head = _head_layers(base_model.output.shape, num_classes, head_units, dropout, binary, seed, multi_label)
    name = f"{spec.layer_name}_classifier"

    if api == "sequential":
        layers = [keras.Input(shape=input_shape, name="image")]
        layers += [preprocessing] if preprocessing is not None else []
        return keras.Sequential(layers + [base_model] + head, name=name)

    inputs = keras.Input(shape=input_shape, name="image")
    features = preprocessing(inputs) if preprocessing is not None else inputs
    # No training=False here: Keras 3 would replace it by fit's training=True.  The base's
    # own class keeps its frozen layers in inference mode (keras_cnn.models.frozen).
    outputs = base_model(features)
    for layer in head:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs, name=name)


def _check_num_classes(num_classes: int, binary: bool, multi_label: bool = False) -> int:
    try:
        num_classes = int(num_classes)
    except (TypeError, ValueError):
        raise UserError(f"the number of classes must be an integer, received: {num_classes!r}") from None
    if multi_label and num_classes >= 1:
        return num_classes
    if num_classes < 2:
        raise UserError(f"a classifier needs at least 2 classes, received: {num_classes}")
    if binary and num_classes != 2:
        raise UserError(f"--binary (one sigmoid output) needs exactly 2 classes, received: {num_classes}")
    return num_classes


def _head_layers(base_output_shape, num_classes: int, head_units: list[int], dropout: float,
                 binary: bool, seed: int | None, multi_label: bool = False) -> list[keras.layers.Layer]:
    """The head, pooling first: its output is the feature vector stage 1 can cache."""

    def initializer(offset: int):
        return keras.initializers.GlorotUniform(seed=None if seed is None else seed + offset)

    # A feature map (CNN) is averaged over its positions, a token sequence (ViT-like
    # keras-hub backbones) over its tokens; a hub feature-vector module is already pooled:
    # the layer (and its name) is kept anyway.
    if len(base_output_shape) == 4:
        pool = keras.layers.GlobalAveragePooling2D(name=HEAD_POOL)
    elif len(base_output_shape) == 3:
        pool = keras.layers.GlobalAveragePooling1D(name=HEAD_POOL)
    else:
        pool = keras.layers.Identity(name=HEAD_POOL)
    layers: list[keras.layers.Layer] = [pool]
    for index, units in enumerate(head_units, start=1):
        layers.append(keras.layers.Dense(units, activation="relu", kernel_initializer=initializer(index),
                                         name=head_dense_name(index)))
    layers.append(keras.layers.Dropout(float(dropout), seed=seed, name=HEAD_DROPOUT))
    if multi_label:
        layers.append(multi_label_output(num_classes, kernel_initializer=initializer(0)))
        return layers
    layers.append(
        keras.layers.Dense(
            1 if binary else num_classes,
            activation="sigmoid" if binary else "softmax",
            kernel_initializer=initializer(0),
            dtype="float32",
            name=PREDICTIONS,
        )
    )
    return layers


def get_base_layer(model: keras.Model) -> keras.Model:
    """The nested base model of a transfer model."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise UserError(f"model {model.name!r} has no nested base: it is not a kcnn transfer model")


def find_boundary(base: keras.Model, layer_name: str) -> int:
    """Index in ``base.layers`` of layer ``layer_name``, or of the first layer whose name starts with it.

    ``"all"`` is index 0.  An unknown name raises a ``UserError`` listing the nearest names.
    """
    boundary = str(layer_name).strip()
    if boundary.lower() == UNFREEZE_ALL:
        return 0
    names = [layer.name for layer in base.layers]
    if boundary in names:
        return names.index(boundary)
    for index, name in enumerate(names):
        if boundary and name.startswith(boundary):
            return index
    # Block prefixes (block7a) first: they are what people usually mean.
    candidates = [*dict.fromkeys(name.split("_")[0] for name in names), *names]
    hint = did_you_mean(boundary, candidates) or f"; for example {', '.join(names[-3:])}"
    raise UserError(f"base {base.name} has no layer named or starting with {layer_name!r}{hint} (or 'all')")


def unfreeze_from(model: keras.Model, layer_name: str, train_bn: bool = False,
                  base_dropout: bool = False) -> dict[str, Any]:
    """Make base layer ``layer_name`` and every later base layer trainable; freeze the ones before.

    ``layer_name``: an exact layer name, a block prefix (``block7a``: the first layer whose
    name starts with it) or ``"all"``.  BatchNorm layers stay frozen unless ``train_bn``
    (for a TF Hub base: the module's BatchNorm scales/offsets, recognised by name).
    ``base_dropout``: whether dropout and stochastic depth in the unfrozen layers act while
    training (the frozen ones never do).  The head stays trainable.  Recompile the model
    afterwards.  Returns the boundary and the parameter counts.
    """
    base = get_base_layer(model)
    index = find_boundary(base, layer_name)
    if isinstance(base, TransferBase):
        base.base_dropout = bool(base_dropout)
    for layer in base.layers:
        if isinstance(layer, HubFeatureLayer):
            layer.train_batch_norm = train_bn
    base.trainable = True
    # Set every layer explicitly: a model's ``trainable`` does not reach its layers' own
    # flags, so an earlier unfreeze_from would otherwise leave its choices behind.
    for position, layer in enumerate(base.layers):
        frozen_batch_norm = not train_bn and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = position >= index and not frozen_batch_norm
    first = base.layers[index]
    if isinstance(first, keras.layers.InputLayer) and index + 1 < len(base.layers):
        first = base.layers[index + 1]
    return {
        "base": base.name,
        "unfreeze_from": str(layer_name).strip(),
        "boundary_layer": first.name,
        "boundary_index": index,
        "trainable_base_layers": sum(1 for layer in base.layers if layer.trainable and layer.trainable_weights),
        "train_bn": bool(train_bn),
        "base_dropout": bool(base_dropout),
        **parameter_counts(model),
    }


def freeze_base(model: keras.Model) -> dict[str, Any]:
    """Freeze the whole base again (stage 1 state); returns the parameter counts."""
    get_base_layer(model).trainable = False
    return parameter_counts(model)


def cut_at_features(model: keras.Model) -> tuple[keras.Model, keras.Model]:
    """(feature extractor: image -> pooled features, head: features -> predictions).

    Both reuse the transfer model's own layers, so they share its weights: training the
    head on cached features trains the whole model's head.  The feature extractor runs the
    frozen base in inference mode, as the whole model does while it trains.
    """
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    if HEAD_POOL not in names:
        raise UserError(f"model {model.name!r} has no {HEAD_POOL!r} layer: it is not a kcnn transfer model")
    cut = names.index(HEAD_POOL) + 1
    base = get_base_layer(model)

    image = keras.Input(shape=tuple(model.input_shape[1:]), name="image")
    features = image
    for layer in layers[:cut]:
        features = layer(features, training=False) if layer is base else layer(features)
    feature_extractor = keras.Model(image, features, name=f"{model.name}_features")

    feature_input = keras.Input(shape=tuple(features.shape[1:]), name="features")
    outputs = feature_input
    for layer in layers[cut:]:
        outputs = layer(outputs)
    head = keras.Model(feature_input, outputs, name=f"{model.name}_head")
    return feature_extractor, head
