"""Discriminative learning rates for fine-tuning (fastai's ``lr_mult``, timm's layer decay).

With ``--lr-mult K`` the head trains at the stage's learning rate and the first unfrozen
block of the base at rate/K; the blocks between get rates spaced geometrically, so each
block's rate is the same multiple of the block before it.  Early layers hold generic
features that need little change; the head is new and needs the most.

Blocks are read from the base's layer names (``block7a``, ``block_16``, ``conv5_block3``,
``stage_2``, ``mixed8`` ...); a layer without a block name joins the next named block
(Inception's convolutions belong to the ``mixedN`` that concatenates them) and layers
after the last block (``top_conv``) form one more block.

The rates are applied by scaling the learning rate per variable inside the optimizer's
own update step (not by scaling gradients: Adam would undo that), so one optimizer,
its slots, EMA and any schedule work unchanged.
"""

from __future__ import annotations

import re
from typing import Any

import keras

from keras_cnn.errors import UserError
from keras_cnn.keras_internals import variable_index
from keras_cnn.models.transfer import get_base_layer
from keras_cnn.optimizers import OPTIMIZERS

# The block a layer belongs to, from its name; the first alternative that matches wins at
# the leftmost position, so "conv5_block3_1_conv" is block "conv5_block3", not "block3".
_BLOCK_NAME = re.compile(r"conv\d+_block\d+|block_?\d+[a-z]?|stage_?\d+|mixed\d+")
TOP_BLOCK = "top"


def block_name(layer_name: str) -> str | None:
    """``block7a_expand_conv`` -> ``block7a``; a name without a block token -> None."""
    match = _BLOCK_NAME.search(layer_name)
    return match.group(0) if match else None


def trainable_base_blocks(model: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
    """(block name, layers) of the base's trainable layers, input side first."""
    base = get_base_layer(model)
    blocks: list[tuple[str, list]] = []
    pending: list = []   # layers waiting for the next named block
    for layer in base.layers:
        if not (layer.trainable and layer.trainable_weights):
            continue
        pending.append(layer)
        name = block_name(layer.name)
        if name is None:
            continue
        if blocks and blocks[-1][0] == name:
            blocks[-1][1].extend(pending)
        else:
            blocks.append((name, pending))
        pending = []
    if pending:
        blocks.append((TOP_BLOCK, pending))
    return blocks


def layer_rate_factors(model: keras.Model, lr_mult: float) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Per-variable learning-rate factors for ``lr_mult``, and a per-block summary for config.json.

    The first trainable base block gets ``1/lr_mult``, the head (everything trainable
    outside the base) gets 1, blocks between are spaced geometrically.  Keys are
    ``variable.path``.
    """
    lr_mult = float(lr_mult)
    if lr_mult < 1:
        raise UserError(f"--lr-mult must be 1 or more (the head's rate / the first unfrozen block's), "
                        f"received: {lr_mult}")
    blocks = trainable_base_blocks(model)
    factors: dict[str, float] = {}
    summary: list[dict[str, Any]] = []
    count = len(blocks)
    for position, (name, layers) in enumerate(blocks):
        # position 0 -> 1/K; the head (position `count`) -> 1.
        factor = lr_mult ** -((count - position) / count)
        paths = [variable.path for layer in layers for variable in layer.trainable_weights]
        factors.update({path: factor for path in paths})
        summary.append({"block": name, "factor": factor, "variables": len(paths)})
    head = [variable.path for variable in model.trainable_weights if variable.path not in factors]
    factors.update({path: 1.0 for path in head})
    summary.append({"block": "head", "factor": 1.0, "variables": len(head)})
    return factors, summary


class LayerRates:
    """Mixin for a Keras optimizer: variable ``v`` is updated at ``learning_rate * rate_factors[v.path]``.

    Variables not named in ``rate_factors`` use the plain rate.
    """

    def __init__(self, *args, rate_factors: dict[str, float] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.rate_factors = {str(path): float(factor) for path, factor in (rate_factors or {}).items()}
        self._factor_by_index: list[float] = []

    def build(self, variables):
        # update_step receives the backend variable (a tf.Variable), which has no Keras
        # path; the optimizer's own variable index bridges the two.
        self._factor_by_index = [self.rate_factors.get(variable.path, 1.0) for variable in variables]
        super().build(variables)

    def update_step(self, gradient, variable, learning_rate):
        factor = self._factor_by_index[variable_index(self, variable)]
        if factor != 1.0:
            learning_rate = keras.ops.multiply(keras.ops.cast(learning_rate, variable.dtype), factor)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "rate_factors": dict(self.rate_factors)}


def _layer_rate_class(optimizer_class: type) -> type:
    name = f"{optimizer_class.__name__}WithLayerRates"
    cls = type(name, (LayerRates, optimizer_class),
               {"__doc__": f"{optimizer_class.__name__} with a learning-rate factor per variable."})
    return keras.saving.register_keras_serializable(package="kcnn", name=name)(cls)


# kcnn optimizer class -> the same with per-variable rates; built once so saved models
# name a registered class.
LAYER_RATE_CLASSES: dict[type, type] = {cls: _layer_rate_class(cls) for cls in set(OPTIMIZERS.values())}


def layer_rate_class(optimizer_class: type) -> type:
    """The per-variable-rate version of a kcnn optimizer class (build it with ``rate_factors=``)."""
    cls = LAYER_RATE_CLASSES.get(optimizer_class)
    if cls is None:
        raise UserError(f"--lr-mult works with the optimizers {', '.join(OPTIMIZERS)}; "
                        f"received {optimizer_class.__name__}")
    return cls
