"""Loading a saved ``.keras`` model with kcnn's custom layers and optimizers registered."""

from __future__ import annotations

import os

import keras

from keras_cnn.errors import UserError


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load ``path`` (a ``.keras`` file); a broken or foreign file is a one-line ``UserError``.

    kcnn's serializable classes register themselves when their modules are imported, so
    those imports come first.  ``compile=False`` (the default) is right for inference and
    for stages that recompile anyway.
    """
    import keras_cnn.models.bases  # noqa: F401 - CaffePreprocessing
    import keras_cnn.models.hub  # noqa: F401 - HubFeatureLayer
    import keras_cnn.train.discriminative  # noqa: F401 - kcnn>AdamWithLayerRates ... (finetune --lr-mult)
    import keras_cnn.train.optimizers  # noqa: F401 - kcnn>Adam ... in compiled models
    import keras_cnn.train.schedules  # noqa: F401 - kcnn>LearningRateCurve (--schedule)

    try:
        return keras.saving.load_model(os.fspath(path), compile=compile)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"cannot load model {path}: {_innermost_reason(error)}") from None


def _innermost_reason(error: BaseException) -> str:
    """The useful line of a Keras loading error (it nests each layer's failure, innermost last)."""
    text = str(error).rsplit("Exception encountered:", 1)[-1]
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
