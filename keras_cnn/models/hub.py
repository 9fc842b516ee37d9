"""TF Hub modules as transfer bases inside Keras 3 models.

``tensorflow_hub.KerasLayer`` is a Keras 2 (tf_keras) layer and cannot go into a Keras 3
model.  :class:`HubFeatureLayer` loads a module in the TF Hub TF2 format (a callable
SavedModel with ``variables`` / ``trainable_variables``) with ``tf.saved_model.load`` and
wraps each of the module's own variables in a ``keras.Variable`` (the same storage, not a
copy), so Keras lists them as trainable / non-trainable weights, gradients reach them,
the optimizer updates them, and ``.keras`` files save and restore their values.

Handles: a tfhub.dev or Kaggle URL (downloaded through tensorflow_hub's cache,
``$TFHUB_CACHE_DIR``) or a local SavedModel directory.
"""

from __future__ import annotations

import inspect
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from keras_cnn.errors import UserError
from keras_cnn.keras_internals import track_variable, trainable_variable_slots
from keras_cnn.models.specs import HUB_PREFIX, BaseSpec

__all__ = ["HUB_PREFIX", "HubFeatureLayer", "build_hub_base", "hub_base_spec", "resolve_hub_handle"]

_URL_SCHEMES = ("http://", "https://", "gs://")

# gamma/beta of a batch-normalisation layer, by the names TF/Keras/Slim give them
# ("stem_bn/gamma", "tpu_batch_normalization/beta", "BatchNorm/gamma"), also once Keras
# has turned "/" into "_" ("stem_bn_gamma").
_BATCH_NORM_VARIABLE = re.compile(
    r"(batch_?norm|batchnormalization|(^|[/_])bn\d*)[^/]*[/_](gamma|beta)(:\d+)?$", re.IGNORECASE
)


def hub_cache_dir() -> str:
    """Where tensorflow_hub caches downloaded modules (``$TFHUB_CACHE_DIR`` or its default)."""
    return os.environ.get("TFHUB_CACHE_DIR") or os.path.join(tempfile.gettempdir(), "tfhub_modules")


def resolve_hub_handle(handle: str) -> str:
    """A TF Hub handle (URL or local SavedModel directory, ``hub:`` prefix allowed) -> local directory.

    A URL goes through ``tensorflow_hub.resolve``: served from the cache when already
    downloaded, downloaded into it otherwise.  Without internet that fails with a one-line
    ``UserError`` saying how to point at a local copy.
    """
    handle = str(handle).strip()
    handle = handle.removeprefix(HUB_PREFIX)
    if not handle:
        raise UserError("empty TF Hub handle; use hub:URL or hub:/path/to/savedmodel")
    if handle.lower().startswith(_URL_SCHEMES):
        return _check_saved_model_dir(_download(handle), handle)
    path = Path(handle).expanduser()
    if path.is_dir():
        return _check_saved_model_dir(str(path.resolve()), handle)
    raise UserError(
        f"TF Hub handle {handle!r} is neither a URL nor an existing SavedModel directory"
    )


def _download(url: str) -> str:
    import tensorflow_hub

    try:
        return tensorflow_hub.resolve(url)
    except Exception as error:  # noqa: BLE001 - urllib, HTTP and tensorflow_hub errors all mean "not available"
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UserError(
            f"cannot download TF Hub module {url} ({reason.strip()}): download it where you have internet "
            f"(it lands in $TFHUB_CACHE_DIR, here {hub_cache_dir()}) or pass hub:/path/to/savedmodel"
        ) from None


def _check_saved_model_dir(path: str, handle: str) -> str:
    if not (Path(path) / "saved_model.pb").is_file():
        raise UserError(f"TF Hub handle {handle!r} is not a SavedModel: {path} has no saved_model.pb")
    return path


def is_batch_norm_variable(name: str) -> bool:
    """Whether a module variable is a BatchNorm scale/offset (kept frozen unless --train-bn)."""
    return bool(_BATCH_NORM_VARIABLE.search(str(name)))


def _keras_variable_name(name: str) -> str:
    # Keras refuses "/" in variable names, and TF's ":0" would end up in optimizer scopes.
    return re.sub(r":\d+$", "", str(name)).replace("/", "_").replace(":", "_")


def _accepts_training(function) -> bool:
    try:
        return "training" in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


@keras.saving.register_keras_serializable(package="kcnn")
class HubFeatureLayer(keras.layers.Layer):
    """A TF Hub TF2 module (e.g. an image feature vector) as a Keras 3 layer.

    Args:
        handle: tfhub.dev / Kaggle URL or local SavedModel directory.
        input_range: the pixel range the module documents, (0, 1) for most image modules;
            inputs are float 0..255 and are scaled to it inside the layer.
        output_key: the entry to use when the module returns a dict.
        train_batch_norm: when the layer is trainable, also train BatchNorm scales/offsets
            and run the module in training mode during ``fit`` (its BN statistics then
            update); by default they stay frozen, as for keras.applications bases.
        module_path: the resolved local directory (set by :meth:`get_config`; a saved model reloads
            from it, or resolves ``handle`` again when it is gone).

    The layer runs in float32 whatever the global dtype policy, because a SavedModel's
    functions are traced for float32.  The module's variables become the layer's weights:
    ``trainable`` toggles them like any Keras layer.
    """

    def __init__(self, handle: str, input_range=(0.0, 1.0), output_key: str | None = None,
                 train_batch_norm: bool = False, module_path: str | None = None, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.handle = str(handle)
        low, high = (float(value) for value in input_range)
        if not high > low:
            raise UserError(f"input_range must be (low, high) with low < high, received: {input_range!r}")
        self.input_range = (low, high)
        self.output_key = output_key
        self._train_batch_norm = bool(train_batch_norm)
        # Reload from the recorded folder; when it is gone (another machine), resolve the handle again.
        has_folder = bool(module_path) and Path(module_path).is_dir()
        self.module_path = module_path if has_folder else resolve_hub_handle(self.handle)
        self._module = _load_module(self.module_path, self.handle)
        self._call_function = self._module.__call__
        self._pass_training = _accepts_training(self._call_function)
        for variable, trainable in _module_variables(self._module):
            track_variable(
                self,
                keras.Variable(
                    initializer=variable,  # a tf.Variable: Keras wraps it, sharing storage
                    trainable=trainable,
                    dtype=variable.dtype,
                    shape=variable.shape,
                    name=_keras_variable_name(variable.name),
                )
            )
        self._ready = True
        self._apply_batch_norm_policy()
        self.built = True

    @property
    def trainable(self) -> bool:
        return keras.layers.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        keras.layers.Layer.trainable.fset(self, value)
        self._apply_batch_norm_policy()

    @property
    def train_batch_norm(self) -> bool:
        return self._train_batch_norm

    @train_batch_norm.setter
    def train_batch_norm(self, value: bool) -> None:
        self._train_batch_norm = bool(value)
        self._apply_batch_norm_policy()

    def _apply_batch_norm_policy(self) -> None:
        if not getattr(self, "_ready", False) or not self.trainable:
            return
        for variable in trainable_variable_slots(self):
            if is_batch_norm_variable(variable.name):
                variable.trainable = self._train_batch_norm

    def call(self, inputs, training=None):
        low, high = self.input_range
        images = tf.cast(inputs, tf.float32) * ((high - low) / 255.0) + low
        if self._pass_training:
            module_training = bool(training) and self.trainable and self._train_batch_norm
            outputs = self._call_function(images, training=module_training)
        else:
            outputs = self._call_function(images)
        return self._select_output(outputs)

    def _select_output(self, outputs):
        if not isinstance(outputs, dict):
            return outputs
        if self.output_key is not None:
            if self.output_key not in outputs:
                raise UserError(
                    f"TF Hub module {self.handle} has no output {self.output_key!r}; it has: {sorted(outputs)}"
                )
            return outputs[self.output_key]
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        raise UserError(
            f"TF Hub module {self.handle} returns several outputs {sorted(outputs)}; choose one with output_key"
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            handle=self.handle,
            input_range=list(self.input_range),
            output_key=self.output_key,
            train_batch_norm=self._train_batch_norm,
            module_path=self.module_path,
        )
        return config


def _load_module(path: str, handle: str):
    try:
        module = tf.saved_model.load(path)
    except Exception as error:  # noqa: BLE001 - any load failure is a bad handle for the user
        reason = next((line for line in str(error).splitlines() if line.strip()), type(error).__name__)
        raise UserError(f"cannot load TF Hub module {handle!r} from {path}: {reason.strip()}") from None
    if not callable(module):
        raise UserError(
            f"TF Hub module {handle!r} is not callable: only the TF2 SavedModel format "
            "(a module with __call__) can be a base, not the TF1 hub.Module format"
        )
    return module


def _module_variables(module) -> list[tuple[tf.Variable, bool]]:
    """(variable, trainable) pairs in a stable order (``.keras`` weights are matched by position).

    A hub-format module lists its ``variables`` and which are ``trainable_variables``;
    otherwise the variables its call function captures are used, with their own flag.
    """
    if hasattr(module, "variables"):
        variables = list(module.variables)
        trainable = getattr(module, "trainable_variables", None)
        trainable_ids = {id(variable) for variable in trainable} if trainable is not None else None
        return [
            (variable, variable.trainable if trainable_ids is None else id(variable) in trainable_ids)
            for variable in variables
        ]
    seen: dict[int, tf.Variable] = {}
    for concrete in getattr(module.__call__, "concrete_functions", []):
        for variable in concrete.variables:
            seen.setdefault(id(variable), variable)
    return [(variable, variable.trainable) for variable in seen.values()]


def build_hub_base(handle: str, input_shape: tuple[int, int, int], weights: str | None = None,
                   name: str = "hub_base", input_range=(0.0, 1.0)) -> keras.Model:
    """A Keras model ``name``: float 0..255 images -> the module's features."""
    inputs = keras.Input(shape=tuple(input_shape), name="hub_input")
    features = HubFeatureLayer(handle, input_range=input_range, name="hub_module")(inputs)
    return keras.Model(inputs, features, name=name)


def hub_base_spec(handle: str, image_size: int = 224, input_range=(0.0, 1.0)) -> BaseSpec:
    """A :class:`BaseSpec` for TF Hub module ``handle`` (the module is not loaded yet).

    ``preprocessing`` is ``"none"`` because :class:`HubFeatureLayer` scales 0..255 pixels
    to ``input_range`` itself; ``params`` and ``feature_width`` are known only once built.
    """
    handle = str(handle)
    handle = handle.removeprefix(HUB_PREFIX)
    if not handle.strip():
        raise UserError("empty TF Hub handle; use hub:URL or hub:/path/to/savedmodel")
    input_range = tuple(float(value) for value in input_range)
    return BaseSpec(
        name=HUB_PREFIX + handle,
        family="hub",
        kind="hub",
        default_image_size=int(image_size),
        preprocessing="none",
        default_unfreeze="all",
        min_image_size=1,
        handle=handle,
        input_range=input_range,
    )
