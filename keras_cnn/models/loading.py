"""Loading a saved ``.keras`` model with kcnn's custom layers and optimizers registered.

Loading is always in Keras's safe mode.  kcnn's TF Hub layer loads a SavedModel, which is
a program: a model that has one loads only when the caller trusts that module
(``trust_hub``, the user's ``--trust-hub``; see :mod:`keras_cnn.models.hub`).
"""

from __future__ import annotations

import os
import zipfile

import keras

from keras_cnn.models.hub import HubModuleNotTrusted, trusted_hub_modules  # also registers HubFeatureLayer
from keras_cnn.models.specs import HUB_PREFIX
import keras_cnn.models.preprocessing  # noqa: F401 - registers CaffePreprocessing, ChannelAffine
import keras_cnn.losses  # noqa: F401 - registers the multi-label positive-weighted loss of compiled models
import keras_cnn.optimizers  # noqa: F401 - registers kcnn>Adam ... of compiled models
from keras_cnn.errors import UserError
from keras_cnn.models.frozen import with_transfer_base  # also registers TransferBase
from keras_cnn.models.keras_hub import import_keras_hub


def load_model(path: str | os.PathLike, compile: bool = False, trust_hub: str | None = None) -> keras.Model:
    """Load ``path`` (a ``.keras`` file); a broken or foreign file is a one-line ``UserError``.

    kcnn's serializable classes register themselves when their modules are imported (at
    the top of this module).  A model with keras-hub layers (a ``keras_hub:`` base) needs
    keras-hub imported first, which is done only then.  ``compile=False`` (the default) is
    right for inference and for stages that recompile anyway.  A transfer model saved by an
    older kcnn gets the base class that keeps its frozen layers in inference mode
    (:func:`keras_cnn.models.frozen.with_transfer_base`).  ``trust_hub``: the TF Hub handle
    (``hub:...``) whose module the model may load; a model naming any other is refused.
    """
    problem = model_file_problem(path)
    if problem is not None:
        raise UserError(f"cannot load model {path}: it {problem}")
    if _uses_keras_hub(path):
        import_keras_hub()
    try:
        with trusted_hub_modules(trust_hub):
            model = keras.saving.load_model(os.fspath(path), compile=compile)
    except HubModuleNotTrusted as error:
        raise UserError(f"{path}: {error}") from None
    except (OSError, ValueError, TypeError) as error:
        raise UserError(f"cannot load model {path}: {_innermost_reason(error)}") from None
    rebuilt = with_transfer_base(model)
    if rebuilt is not model and compile and model.compiled:
        rebuilt.compile_from_config(model.get_compile_config())
    return rebuilt


def hub_base_of(base: str | None) -> str | None:
    """``base`` when it names a TF Hub module (``hub:...``: what ``trust_hub`` takes), else ``None``."""
    return base if base and base.startswith(HUB_PREFIX) else None


def model_file_problem(path: str | os.PathLike) -> str | None:
    """What makes ``path`` no ``.keras`` model file (``"is missing"``, ...), or ``None`` when it may be one.

    Cheap (the archive's table of contents only): a stage is finished only with a model
    file, and a damaged one deserves a better word than Keras's "File not found".
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        return "is missing"
    if not os.path.isfile(path):
        return "is not a file"
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except zipfile.BadZipFile:
        return "is not a Keras model file (not a .keras zip archive: damaged, cut short or replaced?)"
    except OSError as error:
        return f"cannot be read ({error.strerror})"
    if "config.json" not in names:
        return "is not a Keras model file (a zip archive without the model's config.json)"
    return None


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
