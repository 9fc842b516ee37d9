"""What kcnn knows about a transfer base, as plain data; every other module of models/ reads it.

:class:`BaseSpec` describes one base without building it.  The keras.applications bases
are in :mod:`keras_cnn.models.applications` (derived from a family table); ``hub:HANDLE``
(TF Hub module) and ``keras_hub:PRESET_OR_DIR`` (keras-hub preset) specs are made on
demand by :mod:`keras_cnn.models.hub` and :mod:`keras_cnn.models.keras_hub`.
This module imports nothing else from kcnn's models, so the registries never import
each other in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keras_cnn.choices import ModelApi, names
from keras_cnn.errors import UserError

# The Keras APIs a model can be built with (same layers and parameters either way).
APIS = names(ModelApi)

HUB_PREFIX = "hub:"
KERAS_HUB_PREFIX = "keras_hub:"

# What a base's weights expect, as kcnn's preprocessing layer produces it from 0..255 RGB:
#   caffe: RGB->BGR, ImageNet means subtracted (VGG, ResNet v1)
#   tf:    x / 127.5 - 1 (Inception, Xception, MobileNet v1/v2, ResNet v2, NASNet)
#   torch: x / 255, then ImageNet mean/std per channel (DenseNet)
#   none:  the base scales its own input (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3,
#          a TF Hub module, a keras-hub preset whose image converter kcnn puts inside the base)
PREPROCESSING_MODES = ("caffe", "tf", "torch", "none")


@dataclass(frozen=True)
class BaseSpec:
    """What kcnn knows about one transfer base (no model is built to know it).

    ``constructor`` is the ``keras.applications`` function name (``"ResNet50"``) for a
    ``keras`` base.  ``params`` is the total of the base without top and with
    ``weights=None``, exactly as ``model.summary()`` prints it; ``None`` when only
    building tells (TF Hub, keras-hub).  ``top1`` is the ImageNet top-1 accuracy (percent)
    of the Keras applications table.  ``default_unfreeze`` is where ``kcnn finetune``
    starts by default: a layer name or block prefix of the base (``"all"``: everything).
    """

    name: str
    family: str
    kind: str
    default_image_size: int
    preprocessing: str
    default_unfreeze: str
    params: int | None = None
    feature_width: int | None = None
    top1: float | None = None
    min_image_size: int = 32
    constructor: str | None = None            # keras.applications function (keras bases)
    keras_name: str | None = None             # the model name Keras gives it (its layer names and weights file use it)
    constructor_kwargs: tuple[tuple[str, Any], ...] = ()   # extra constructor arguments, as pairs
    finetune_learning_rate: float = 1e-5
    weights_file: str | None = None           # no-top ImageNet weights file in the Keras cache
    weights_url: str | None = None            # where Keras downloads it from
    handle: str | None = None                 # TF Hub URL/folder or keras-hub preset/folder
    input_range: tuple[float, float] | None = None   # pixel range a TF Hub module expects

    @property
    def layer_name(self) -> str:
        """The name of the base inside a transfer model (a handle is not a valid name)."""
        return {"hub": "hub_base", "keras_hub": "keras_hub_base"}.get(self.kind, self.name)

    @property
    def hub_handle(self) -> str | None:
        """The TF Hub handle of a ``hub`` base (``None`` otherwise)."""
        return self.handle if self.kind == "hub" else None

    def input_shape(self, image_size: int | tuple[int, int] | None = None) -> tuple[int, int, int]:
        """(height, width, 3) for ``image_size`` (default: the base's own), checked."""
        height, width = normalize_image_size(image_size, self.default_image_size)
        if min(height, width) < self.min_image_size:
            raise UserError(
                f"{self.name} needs images of at least {self.min_image_size}x{self.min_image_size} pixels, "
                f"received: {height}x{width}"
            )
        return (height, width, 3)


def normalize_image_size(image_size: int | tuple[int, int] | list[int] | None, default: int) -> tuple[int, int]:
    """``None`` -> (default, default); ``96`` -> (96, 96); ``(h, w)`` -> (h, w)."""
    if image_size is None:
        return (int(default), int(default))
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    try:
        height, width = (int(value) for value in image_size)
    except (TypeError, ValueError):
        raise UserError(f"image size must be N or (height, width), received: {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise UserError(f"image size must be positive, received: {image_size!r}")
    return (height, width)


def check_api(api: str) -> str:
    """``api`` if it is one of :data:`APIS`, else a one-line ``UserError``."""
    if api not in APIS:
        raise UserError(f"unknown model API {api!r}; choose one of: {', '.join(APIS)}")
    return api
