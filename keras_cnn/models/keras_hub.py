"""keras-hub presets as transfer bases: ``--base keras_hub:PRESET_OR_DIR``.

keras-hub (``pip install 'kcnn[keras-hub]'``) is the Keras 3 home of pretrained vision
backbones (ResNet, EfficientNet, MobileNet, DenseNet, VGG, ViT, ...).  A preset is a
folder with ``config.json``, ``model.weights.h5`` and usually ``image_converter.json``;
a handle (``kaggle://keras/resnetv2/keras/resnet_50_imagenet``, ``hf://...`` or a
built-in preset name) is downloaded by keras-hub into its cache.

The base kcnn builds is a plain functional Keras model: the preset's image converter as a
:class:`~keras_cnn.models.preprocessing.ChannelAffine` layer (its scale and offset; the
pipeline already resizes), then the backbone's own layers, unwrapped from the Backbone
class so ``--unfreeze-from`` names them and a saved run needs no Backbone class.
keras-hub itself is imported only when such a base is used: it is an optional extra.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import keras

from keras_cnn.errors import UserError, first_line
from keras_cnn.models.downloads import can_download
from keras_cnn.models.preprocessing import ChannelAffine
from keras_cnn.models.specs import KERAS_HUB_PREFIX, BaseSpec

INSTALL_HINT = "pip install 'kcnn[keras-hub]'"
PRESET_CONFIG = "config.json"
IMAGE_CONVERTER_CONFIG = "image_converter.json"
DEFAULT_IMAGE_SIZE = 224

# Where a remote handle is downloaded from, by its scheme (a bare preset name is on Kaggle).
_DOWNLOAD_HOSTS = {"kaggle://": "https://www.kaggle.com", "hf://": "https://huggingface.co",
                   "gs://": "https://storage.googleapis.com", "": "https://www.kaggle.com"}


def import_keras_hub():
    """The keras_hub module, or a one-line ``UserError`` saying how to install it."""
    try:
        import keras_hub
    except ImportError:
        raise UserError(f"keras_hub: bases need the keras-hub package: {INSTALL_HINT}") from None
    return keras_hub


def _strip(handle: str) -> str:
    handle = str(handle).strip().removeprefix(KERAS_HUB_PREFIX).strip()
    if not handle:
        raise UserError("empty keras-hub preset; use keras_hub:PRESET_NAME, keras_hub:kaggle://... "
                        "or keras_hub:/path/to/preset_folder")
    return handle


def _looks_like_path(handle: str) -> bool:
    return handle.startswith((".", "/", "~")) or ("/" in handle and "://" not in handle)


def resolve_preset(handle: str) -> str:
    """A preset handle -> what ``from_preset`` should load: an absolute folder, or the remote handle.

    A local folder must hold ``config.json``.  A remote handle is checked for a connection
    first (a few seconds at most), so an offline machine stops before any work with a hint
    to use a local folder.
    """
    handle = _strip(handle)
    path = Path(handle).expanduser()
    if path.is_dir():
        if not (path / PRESET_CONFIG).is_file():
            raise UserError(f"keras-hub preset folder {path} has no {PRESET_CONFIG}")
        return str(path.resolve())
    if _looks_like_path(handle):
        raise UserError(f"keras-hub preset folder {handle!r} does not exist")
    scheme = next((prefix for prefix in _DOWNLOAD_HOSTS if prefix and handle.startswith(prefix)), "")
    host = _DOWNLOAD_HOSTS[scheme]
    if not can_download(host):
        raise UserError(
            f"cannot download keras-hub preset {handle!r} (no connection to {host}): download it where you "
            "have internet (keras-hub caches it) and pass keras_hub:/path/to/preset_folder"
        )
    return handle


def _converter_config(folder: Path) -> dict[str, Any] | None:
    path = folder / IMAGE_CONVERTER_CONFIG
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("config", {})
    except (OSError, ValueError, AttributeError) as error:
        raise UserError(f"cannot read {path}: {first_line(error)}") from None


def keras_hub_base_spec(handle: str) -> BaseSpec:
    """A :class:`BaseSpec` for keras-hub preset ``handle`` (nothing is loaded or downloaded).

    The default image size is the preset's image converter's, when a local folder says so.
    """
    handle = _strip(handle)
    image_size = DEFAULT_IMAGE_SIZE
    folder = Path(handle).expanduser()
    converter = _converter_config(folder) if folder.is_dir() else None
    if converter and converter.get("image_size"):
        image_size = int(converter["image_size"][0])
    return BaseSpec(
        name=KERAS_HUB_PREFIX + handle,
        family="keras_hub",
        kind="keras_hub",
        default_image_size=image_size,
        preprocessing="none",           # the preset's image converter is inside the base
        default_unfreeze="all",
        min_image_size=1,
        handle=handle,
    )


def build_keras_hub_base(spec: BaseSpec, input_shape: tuple[int, int, int], load_weights: bool = True):
    """The base of ``spec``: 0..255 images -> image converter -> backbone features, as one functional model."""
    keras_hub = import_keras_hub()
    source = resolve_preset(spec.handle)
    try:
        backbone = keras_hub.models.Backbone.from_preset(source, load_weights=load_weights)
        if tuple(backbone.input_shape[1:]) != tuple(input_shape):
            # Presets built for any size take (None, None, 3); others are rebuilt for this size.
            try:
                backbone = keras_hub.models.Backbone.from_preset(source, load_weights=load_weights,
                                                                 image_shape=tuple(input_shape))
            except TypeError:
                pass  # the backbone has no image_shape: it takes any size
    except Exception as error:  # noqa: BLE001 - keras-hub raises many kinds for a bad preset
        raise UserError(f"cannot load keras-hub preset {spec.handle!r}: {first_line(error)}") from None
    converter = _image_converter(keras_hub, source)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    images = inputs
    if converter is not None and (converter.scale is not None or converter.offset is not None):
        images = ChannelAffine(1.0 if converter.scale is None else converter.scale,
                               0.0 if converter.offset is None else converter.offset,
                               name="image_converter")(images)
    # Calling the Functional graph directly (not as a layer) lays the backbone's layers out
    # in this model: --unfreeze-from finds them by name, and no Backbone class is saved.
    features = backbone.call(images)
    return keras.Model(inputs, features, name=spec.layer_name)


def _image_converter(keras_hub, source: str):
    """The preset's image converter, or ``None`` when it has none (its images are then used as they are)."""
    folder = Path(source)
    if folder.is_dir() and not (folder / IMAGE_CONVERTER_CONFIG).is_file():
        return None
    try:
        return keras_hub.layers.ImageConverter.from_preset(source)
    except Exception as error:  # noqa: BLE001 - a remote preset without a converter, or a broken one
        if folder.is_dir():
            raise UserError(f"cannot load the image converter of keras-hub preset {source}: "
                            f"{first_line(error)}") from None
        return None
