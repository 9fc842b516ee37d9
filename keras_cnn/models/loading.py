"""Loading a saved ``.keras`` model with kcnn's custom layers and optimizers registered."""

from __future__ import annotations

import os
import zipfile

import keras

import keras_cnn.models.hub  # noqa: F401 - registers HubFeatureLayer
import keras_cnn.models.preprocessing  # noqa: F401 - registers CaffePreprocessing, ChannelAffine
import keras_cnn.losses  # noqa: F401 - registers the multi-label positive-weighted loss of compiled models
import keras_cnn.optimizers  # noqa: F401 - registers kcnn>Adam ... of compiled models
from keras_cnn.errors import UserError
from keras_cnn.models.frozen import with_transfer_base  # also registers TransferBase
from keras_cnn.models.keras_hub import import_keras_hub


def load_model(path: str | os.PathLike, compile: bool = False) -> keras.Model:
    """Load ``path`` (a ``.keras`` file); a broken or foreign file is a one-line ``UserError``.

    kcnn's serializable classes register themselves when their modules are imported (at
    the top of this module).  A model with keras-hub layers (a ``keras_hub:`` base) needs
    keras-hub imported first, which is done only then.  ``compile=False`` (the default) is
    right for inference and for stages that recompile anyway.  A transfer model saved by an
    older kcnn gets the base class that keeps its frozen layers in inference mode
    (:func:`keras_cnn.models.frozen.with_transfer_base`).
    """
    if _uses_keras_hub(path):
        import_keras_hub()
    try:
        model = keras.saving.load_model(os.fspath(path), compile=compile)
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"cannot load model {path}: {_innermost_reason(error)}") from None
    rebuilt = with_transfer_base(model)
    if rebuilt is not model and compile and model.compiled:
        rebuilt.compile_from_config(model.get_compile_config())
    return rebuilt


def _uses_keras_hub(path: str | os.PathLike) -> bool:
    """Whether the saved model's config names a keras_hub class (read from the archive, nothing built)."""
    try:
        with zipfile.ZipFile(os.fspath(path)) as archive:
            return b'"keras_hub' in archive.read("config.json")
    except (OSError, KeyError, zipfile.BadZipFile):
        return False  # keras.saving.load_model says what is wrong with the file


def _innermost_reason(error: BaseException) -> str:
    """The useful line of a Keras loading error (it nests each layer's failure, innermost last)."""
    text = str(error).rsplit("Exception encountered:", 1)[-1]
    return next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
