"""Optimizers by name, safe for variables restored from a SavedModel (TF Hub bases).

Keras 3 names an optimizer slot after its model variable's path (``<path>_momentum``).
Variables restored from a SavedModel keep TensorFlow's ``:0`` suffix in their name, and
``'Conv1_kernel:0_momentum' is not a valid scope name`` stops the optimizer while it
builds its slots.  The classes here are the Keras optimizers with one change: slot names
are cleaned of characters a TensorFlow scope refuses.  They are registered as Keras
serializable objects (``kcnn>Adam`` ...) so a compiled model saved to ``.keras`` reloads,
provided this module has been imported first.
"""

from __future__ import annotations

import re
from typing import Any

import keras

from keras_cnn.errors import UserError

# Characters a TensorFlow name scope accepts after the first one (others become "_").
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9_.\-]")


def safe_variable_name(name: str) -> str:
    """``name`` with characters a TensorFlow scope refuses (``:``, ``/`` ...) replaced by ``_``."""
    return _UNSAFE_NAME_CHARACTERS.sub("_", str(name))


class SafeSlotNames:
    """Mixin for a Keras optimizer: every variable it creates gets a scope-safe name.

    ``add_variable_from_reference`` builds the slot name from the model variable's path and
    then calls ``add_variable``; cleaning the name here covers both routes.
    """

    def add_variable(self, shape, initializer="zeros", dtype=None, aggregation="none",
                     layout=None, name=None):
        if name is not None:
            name = safe_variable_name(name)
        return super().add_variable(
            shape=shape, initializer=initializer, dtype=dtype,
            aggregation=aggregation, layout=layout, name=name,
        )


@keras.saving.register_keras_serializable(package="kcnn", name="Adam")
class Adam(SafeSlotNames, keras.optimizers.Adam):
    """``keras.optimizers.Adam`` with scope-safe slot names."""


@keras.saving.register_keras_serializable(package="kcnn", name="SGD")
class SGD(SafeSlotNames, keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with scope-safe slot names."""


@keras.saving.register_keras_serializable(package="kcnn", name="RMSprop")
class RMSprop(SafeSlotNames, keras.optimizers.RMSprop):
    """``keras.optimizers.RMSprop`` with scope-safe slot names."""


@keras.saving.register_keras_serializable(package="kcnn", name="AdamW")
class AdamW(SafeSlotNames, keras.optimizers.AdamW):
    """``keras.optimizers.AdamW`` with scope-safe slot names."""


# name on the command line -> optimizer class; adding an optimizer = one entry.
OPTIMIZERS: dict[str, type[keras.optimizers.Optimizer]] = {
    "adam": Adam,
    "sgd": SGD,
    "rmsprop": RMSprop,
    "adamw": AdamW,
}


def make_optimizer(name: str, learning_rate: float, **kwargs: Any) -> keras.optimizers.Optimizer:
    """Build the optimizer called ``name`` (adam, sgd, rmsprop, adamw) with ``learning_rate``.

    Extra keyword arguments go to the Keras class unchanged and nothing is defaulted
    behind the caller's back: SGD has no momentum unless ``momentum=0.9`` (the Keras
    fine-tuning recipe) is passed.
    """
    key = str(name).strip().lower()
    if key not in OPTIMIZERS:
        raise UserError(f"unknown optimizer {name!r}; choose one of: {', '.join(OPTIMIZERS)}")
    if not learning_rate or learning_rate <= 0:
        raise UserError(f"the learning rate must be a positive number, received: {learning_rate!r}")
    try:
        return OPTIMIZERS[key](learning_rate=float(learning_rate), **kwargs)
    except (TypeError, ValueError) as error:
        raise UserError(f"cannot build optimizer {name!r} with {kwargs}: {error}") from None
