"""The private parts of Keras that kcnn relies on, in one place.

Keras's public API has no way to do a few things kcnn needs; each such use of a private
attribute or module lives here, in a small function with the reason beside it, and
``tests/test_keras_internals.py`` fails loudly when a Keras release changes one of them.
``setup.cfg`` keeps ``keras`` below its next major version.
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

    def operation_fn(operation):
        def call(*args, **kwargs):
            # The same test Functional's own operation_fn makes before passing ``training``.
            if "training" in getattr(operation, "_call_context_args", ()):
                value = training_for(operation)
                if value is not None:
                    kwargs["training"] = value
            return operation(*args, **kwargs)

        return call

    outputs = model._run_through_graph(inputs, operation_fn=operation_fn)
    if isinstance(outputs, (list, tuple)) and len(outputs) == 1:
        return outputs[0]
    return outputs
