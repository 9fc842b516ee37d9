"""The transfer bases: one table that every other part of kcnn reads.

A base is a pretrained feature extractor without its classifier (``include_top=False``).
Each registry entry says how to build it, its default input size, the pixel scaling its
weights expect, its feature width, where fine-tuning starts by default, and its reference
parameter count.  Adding a base = adding one entry to ``BASES``.  ``hub:HANDLE`` names a
TF Hub module instead (see :mod:`keras_cnn.models.hub`).

Every kcnn model takes float32 pixels in 0..255; :func:`preprocessing_layer` gives the
layer that turns them into what a base's weights expect, and the transfer model puts it
in front of the base so exported models take raw images.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import keras

from keras_cnn.errors import UserError

PREPROCESSING_MODES = ("caffe", "tf", "none", "unit")
HUB_PREFIX = "hub:"

# ImageNet channel means in BGR order, as keras.applications' "caffe" mode subtracts them.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)


@dataclass(frozen=True)
class BaseSpec:
    """What kcnn knows about one transfer base.

    ``builder(input_shape=, weights=, name=)`` returns the keras.applications model without its top
    (``weights`` is ``"imagenet"`` or ``None``).  ``params`` is the reference total of the
    base without top (what ``model.summary()`` prints); ``None`` for TF Hub modules, whose
    size is only known once loaded.  ``preprocessing`` names the scaling kcnn puts in front
    of the base: ``caffe`` (RGB to BGR, ImageNet means subtracted), ``tf`` (to [-1, 1]),
    ``unit`` (to [0, 1]) or ``none`` (the base scales its own input).
    """

    name: str
    family: str
    builder: Callable[..., Any]
    default_image_size: int
    params: int | None
    feature_width: int | None
    preprocessing: str
    default_unfreeze: str
    finetune_learning_rate: float = 1e-5
    min_image_size: int = 32
    weights_file: str | None = None      # file name of the no-top ImageNet weights in the Keras cache
    weights_url: str | None = None       # where Keras downloads it from
    hub_handle: str | None = None        # TF Hub URL or local SavedModel directory (hub bases only)
    input_range: tuple[float, float] | None = None   # pixel range a hub module expects

    @property
    def kind(self) -> str:
        """``"hub"`` for a TF Hub module, ``"keras"`` for a keras.applications base."""
        return "hub" if self.hub_handle is not None else "keras"

    @property
    def layer_name(self) -> str:
        """The name of the base inside a transfer model (a hub handle is not a valid name)."""
        return "hub_base" if self.kind == "hub" else self.name

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


def _application(class_name: str) -> Callable[..., keras.Model]:
    """A builder for ``keras.applications.<class_name>`` without its top."""

    def build(input_shape: tuple[int, int, int], weights: str | None, name: str) -> keras.Model:
        application = getattr(keras.applications, class_name)
        return application(include_top=False, weights=weights, input_shape=input_shape, name=name)

    build.__name__ = f"build_{class_name}"
    return build


_KERAS_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/"

BASES: dict[str, BaseSpec] = {
    spec.name: spec
    for spec in (
        BaseSpec(
            name="vgg16",
            family="vgg16",
            builder=_application("VGG16"),
            default_image_size=224,
            params=14_714_688,
            feature_width=512,
            preprocessing="caffe",
            default_unfreeze="block5_conv1",
            min_image_size=32,
            weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_url=_KERAS_WEIGHTS + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BaseSpec(
            name="inception_v3",
            family="inception_v3",
            builder=_application("InceptionV3"),
            default_image_size=299,
            params=21_802_784,
            feature_width=2048,
            preprocessing="tf",
            default_unfreeze="mixed8",
            min_image_size=75,
            weights_file="inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_url=_KERAS_WEIGHTS + "inception_v3/inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
        ),
        BaseSpec(
            name="efficientnet_b0",
            family="efficientnet",
            builder=_application("EfficientNetB0"),
            default_image_size=224,
            params=4_049_571,
            feature_width=1280,
            # Rescaling and ImageNet normalisation are layers inside the Keras model.
            preprocessing="none",
            default_unfreeze="block7a",
            min_image_size=32,
            weights_file="efficientnetb0_notop.h5",
            weights_url="https://storage.googleapis.com/keras-applications/efficientnetb0_notop.h5",
        ),
    )
}


def is_hub_name(name: str) -> bool:
    """Whether ``name`` is a ``hub:HANDLE`` base name."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def get_base_spec(name: str | BaseSpec) -> BaseSpec:
    """The spec of base ``name``: a registry name or ``hub:HANDLE``."""
    if isinstance(name, BaseSpec):
        return name
    if is_hub_name(name):
        from keras_cnn.models.hub import hub_base_spec

        return hub_base_spec(name[len(HUB_PREFIX):])
    key = str(name).strip().lower()
    if key not in BASES:
        raise UserError(
            f"unknown base {name!r}; choose one of: {', '.join(BASES)}, or hub:HANDLE "
            "(a tfhub.dev / Kaggle URL or a local SavedModel directory)"
        )
    return BASES[key]


def describe_bases() -> list[dict[str, Any]]:
    """One dict per registered base, for ``kcnn models`` (no model is built)."""
    return [
        {
            "name": spec.name,
            "kind": "transfer",
            "input_shape": [spec.default_image_size, spec.default_image_size, 3],
            "params": spec.params,
            "feature_width": spec.feature_width,
            "preprocessing": spec.preprocessing,
            "default_unfreeze": spec.default_unfreeze,
        }
        for spec in BASES.values()
    ]


def build_base(spec_or_name: str | BaseSpec, image_size: int | tuple[int, int] | None = None,
               weights: str | os.PathLike | None = "imagenet") -> keras.Model:
    """Build base ``spec_or_name`` (no top) for ``image_size`` with ``weights``.

    ``weights``: ``"imagenet"`` (Keras downloads it into its cache; checked first, so an
    offline machine fails at once), ``"none"``/``None`` (random initialisation) or the path
    of a weights file (``.h5`` / ``.weights.h5``) loaded after building.  The model is
    named :attr:`BaseSpec.layer_name`.
    """
    from keras_cnn.models.weights import load_weights_file, resolve_weights

    spec = get_base_spec(spec_or_name)
    input_shape = spec.input_shape(image_size)
    resolved = resolve_weights(spec, weights)
    keras_weights = "imagenet" if resolved == "imagenet" else None
    model = spec.builder(input_shape=input_shape, weights=keras_weights, name=spec.layer_name)
    if resolved not in (None, "imagenet"):
        load_weights_file(model, resolved)
    return model


@keras.saving.register_keras_serializable(package="kcnn")
class CaffePreprocessing(keras.layers.Layer):
    """0..255 RGB -> "caffe" input: channels reversed to BGR, ImageNet means subtracted.

    Same numbers as ``keras.applications.vgg16.preprocess_input`` for channels-last images.
    """

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        means = keras.ops.convert_to_tensor(CAFFE_BGR_MEANS, dtype=bgr.dtype)
        return bgr - means

    def compute_output_shape(self, input_shape):
        return input_shape


def preprocessing_layer(spec: str | BaseSpec) -> keras.layers.Layer | None:
    """The layer mapping float 0..255 pixels to what ``spec``'s weights expect (``None``: none needed)."""
    spec = get_base_spec(spec)
    builders: dict[str, Callable[[], keras.layers.Layer | None]] = {
        "caffe": lambda: CaffePreprocessing(name="preprocessing"),
        "tf": lambda: keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing"),
        "unit": lambda: keras.layers.Rescaling(1.0 / 255.0, name="preprocessing"),
        "none": lambda: None,
    }
    if spec.preprocessing not in builders:
        raise UserError(
            f"base {spec.name} has unknown preprocessing {spec.preprocessing!r}; "
            f"expected one of {PREPROCESSING_MODES}"
        )
    return builders[spec.preprocessing]()
