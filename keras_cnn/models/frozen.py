"""Frozen means frozen: the base of a transfer model, whose frozen layers always run in inference mode.

In Keras 3, calling a base inside a model as ``base(x, training=False)`` does not keep it in
inference mode: when the outer model is called with ``training=True`` (``fit`` does), that
value replaces the one recorded for every inner call.  Frozen BatchNormalization layers run
in inference mode anyway (Keras 3 does that for any BN layer with ``trainable=False``), but
every other layer that acts differently in training would fire inside the frozen part:
EfficientNet's stochastic depth (nine Dropout layers, ``block2b_drop`` ... ``block6d_drop``,
in B0), EfficientNetV2's, ConvNeXt's when it has a drop-path rate.  The frozen layers would
then inject noise the user never asked for, and training the layers above them on their
output computed once (the feature and frozen-layer caches) would no longer equal training
the whole model.

:class:`TransferBase` is a functional Keras model that decides ``training`` per layer, from
the layer's own state, whatever the caller passes (:func:`layer_training`):

- a frozen layer (``trainable=False``) always runs in inference mode;
- a trainable BatchNormalization layer (``kcnn finetune --train-bn``) learns from batch
  statistics while training, as the Keras book's InceptionV3 recipe trains them;
- a trainable TF Hub module gets the caller's value and applies its own rule (it runs in
  training mode only with ``--train-bn``; see :class:`keras_cnn.models.hub.HubFeatureLayer`);
- any other trainable layer (dropout, stochastic depth, a block that holds them) trains in
  training mode only when ``base_dropout`` is on: the choice between timm's and fastai's
  fine-tuning (on) and the keras-io recipe's ``training=False`` (off).

A layer that holds other layers gets one value for all of them.  The class is registered
(``kcnn>TransferBase``): ``.keras`` files keep it and load in Keras's safe mode, and an
export is a traced graph that needs no kcnn code.  :func:`with_transfer_base` turns a model
saved by an older kcnn, whose base was a plain functional model, into one with this base.
"""

from __future__ import annotations

import keras

from keras_cnn.keras_internals import call_graph_with_training
from keras_cnn.models.hub import HubFeatureLayer

# The head layer every kcnn transfer model has (and a from-scratch model has not).
_HEAD_POOL = "head_pool"


# Keras layers that act only while training, beside BatchNormalization (whose frozen layers
# Keras itself runs in inference mode).  Stochastic depth has no Keras class: EfficientNet
# builds it from Dropout, other models (ConvNeXt, keras-hub backbones) from a class of their
# own, recognised by its name.
_TRAINING_ONLY_CLASSES = (keras.layers.Dropout, keras.layers.SpatialDropout1D, keras.layers.SpatialDropout2D,
                          keras.layers.SpatialDropout3D, keras.layers.GaussianDropout, keras.layers.GaussianNoise,
                          keras.layers.AlphaDropout)
_TRAINING_ONLY_NAMES = ("Dropout", "StochasticDepth", "DropPath", "Noise")


def acts_only_in_training(layer) -> bool:
    """Whether ``layer`` computes something else while training (dropout, noise, stochastic depth).

    BatchNormalization is not counted: frozen, it runs in inference mode either way.  A
    layer with a zero rate does nothing in either mode and is not counted.
    """
    if isinstance(layer, keras.layers.BatchNormalization):
        return False
    kind = type(layer).__name__
    if not (isinstance(layer, _TRAINING_ONLY_CLASSES) or any(name in kind for name in _TRAINING_ONLY_NAMES)):
        return False
    rate = next((getattr(layer, name) for name in ("rate", "drop_path_rate", "stddev")
                 if isinstance(getattr(layer, name, None), (int, float))), None)
    return rate is None or rate > 0


def layer_training(layer, training, base_dropout: bool) -> bool | None:
    """The ``training`` value a base layer runs with when the base is called with ``training``.

    See the module docstring for the rule; ``None`` and ``False`` pass through unchanged.
    """
    if not training:
        return training
    if not layer.trainable:
        return False
    if isinstance(layer, (keras.layers.BatchNormalization, HubFeatureLayer)):
        return True
    return bool(base_dropout)


@keras.saving.register_keras_serializable(package="kcnn")
class TransferBase(keras.Model):
    """A functional model whose frozen layers run in inference mode whatever ``training`` it is called with.

    Args:
        inputs, outputs, name: as for a functional ``keras.Model``.
        base_dropout: whether trainable layers that act only in training (dropout,
            stochastic depth) do so during training; frozen ones never do.
    """

    def __init__(self, inputs, outputs, name=None, *, base_dropout: bool = False, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, name=name, **kwargs)
        self.base_dropout = bool(base_dropout)

    def call(self, inputs, training=None, mask=None):
        # mask: image bases take none.
        return call_graph_with_training(self, inputs,
                                        lambda layer: layer_training(layer, training, self.base_dropout))

    def get_config(self):
        return {**super().get_config(), "base_dropout": self.base_dropout}


def as_transfer_base(model: keras.Model, base_dropout: bool = False) -> TransferBase:
    """A :class:`TransferBase` over ``model``'s graph: the same layers and weights, not a copy."""
    if isinstance(model, TransferBase):
        model.base_dropout = bool(base_dropout)
        return model
    return TransferBase(model.input, model.output, name=model.name, base_dropout=base_dropout)


def sub_base(base: TransferBase, inputs, outputs, name: str) -> TransferBase:
    """A part of ``base`` (from ``inputs`` to ``outputs``, tensors of its graph) with the same training rule."""
    return TransferBase(inputs, outputs, name=name, base_dropout=base.base_dropout)


def with_transfer_base(model: keras.Model) -> keras.Model:
    """``model`` with its base made a :class:`TransferBase`, when it is a transfer model without one.

    Models kcnn saved before the base had its own class (their base is a plain functional
    model, called with ``training=False``) are rebuilt around the same layers, so their
    frozen layers keep to inference mode too; other models are returned as they are.
    """
    names = [layer.name for layer in model.layers]
    base = next((layer for layer in model.layers if isinstance(layer, keras.Model)), None)
    if base is None or isinstance(base, TransferBase) or _HEAD_POOL not in names:
        return model
    replacement = as_transfer_base(base)
    if isinstance(model, keras.Sequential):
        layers = [replacement if layer is base else layer for layer in model.layers]
        return keras.Sequential([keras.Input(shape=model.input_shape[1:], name="image"), *layers], name=model.name)
    inputs = keras.Input(shape=model.input_shape[1:], name=model.inputs[0].name)
    outputs = inputs
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        outputs = replacement(outputs) if layer is base else layer(outputs)
    return keras.Model(inputs, outputs, name=model.name)
