"""Transfer bases by name: look one up, describe them all, build one.

A base is a pretrained feature extractor without its classifier.  Names are the
keras.applications bases of :mod:`keras_cnn.models.applications` (``resnet50``,
``mobilenet_v3_small``, ``convnext_tiny`` ...), ``hub:HANDLE`` (a TF Hub module, see
:mod:`keras_cnn.models.hub`) and ``keras_hub:PRESET_OR_DIR`` (a keras-hub preset, see
:mod:`keras_cnn.models.keras_hub`).  Every kcnn model takes float pixels in 0..255; the
layer that turns them into what a base's weights expect comes from
:mod:`keras_cnn.models.preprocessing`.
"""

from __future__ import annotations

import os
from typing import Any

import keras

from keras_cnn.errors import UserError, first_line
from keras_cnn.models.applications import APPLICATION_BASES, application_base
from keras_cnn.models.hub import build_hub_base, hub_base_spec
from keras_cnn.models.keras_hub import build_keras_hub_base, keras_hub_base_spec
from keras_cnn.models.preprocessing import preprocessing_for
from keras_cnn.models.specs import HUB_PREFIX, KERAS_HUB_PREFIX, BaseSpec, normalize_image_size
from keras_cnn.models.weights import load_weights_file, resolve_weights

# What callers look up here besides the bases themselves.
__all__ = ["BASES", "build_base", "describe_bases", "get_base_spec", "is_hub_name", "normalize_image_size",
           "preprocessing_layer"]

# Kept under its old name: the registry of keras.applications bases.
BASES = APPLICATION_BASES


def is_hub_name(name: str) -> bool:
    """Whether ``name`` is a ``hub:HANDLE`` base name."""
    return isinstance(name, str) and name.startswith(HUB_PREFIX)


def get_base_spec(name: str | BaseSpec) -> BaseSpec:
    """The spec of base ``name``: a registry name, ``hub:HANDLE`` or ``keras_hub:PRESET_OR_DIR``."""
    if isinstance(name, BaseSpec):
        return name
    if is_hub_name(name):
        return hub_base_spec(name[len(HUB_PREFIX):])
    if isinstance(name, str) and name.startswith(KERAS_HUB_PREFIX):
        return keras_hub_base_spec(name)
    return application_base(name)


def preprocessing_layer(base: str | BaseSpec) -> keras.layers.Layer | None:
    """The layer mapping float 0..255 pixels to what base ``base``'s weights expect (``None``: none needed)."""
    return preprocessing_for(get_base_spec(base))


def describe_bases() -> list[dict[str, Any]]:
    """One dict per keras.applications base, grouped by family (no model is built)."""
    return [
        {
            "name": spec.name,
            "kind": "transfer",
            "family": spec.family,
            "input_shape": [spec.default_image_size, spec.default_image_size, 3],
            "params": spec.params,
            "top1": spec.top1,
            "feature_width": spec.feature_width,
            "preprocessing": spec.preprocessing,
            "default_unfreeze": spec.default_unfreeze,
            "min_image_size": spec.min_image_size,
        }
        for spec in APPLICATION_BASES.values()
    ]


def _build_application(spec: BaseSpec, input_shape: tuple[int, int, int], weights: str | None) -> keras.Model:
    constructor = getattr(keras.applications, spec.constructor)
    # Keras's own model name is kept while building: its layer names and, for EfficientNet
    # and ConvNeXt, its weights file are derived from it.  The model is renamed afterwards.
    try:
        model = constructor(include_top=False, weights=weights, input_shape=input_shape,
                            **dict(spec.constructor_kwargs))
    except ValueError as error:
        raise UserError(f"cannot build {spec.name} for input {input_shape}: {first_line(error)}") from None
    except Exception as error:  # noqa: BLE001 - a failed weights download surfaces as several kinds
        if weights is None:
            raise
        raise UserError(f"cannot get ImageNet weights for {spec.name} ({first_line(error)}): put "
                        f"{spec.weights_file} in the Keras cache, pass --weights PATH, or --weights none") from None
    model.name = spec.layer_name
    return model


def build_base(spec_or_name: str | BaseSpec, image_size: int | tuple[int, int] | None = None,
               weights: str | os.PathLike | None = "imagenet") -> keras.Model:
    """Build base ``spec_or_name`` (no top) for ``image_size`` with ``weights``.

    ``weights``: ``"imagenet"`` (the pretrained weights: Keras downloads them into its
    cache, checked first so an offline machine fails at once; a TF Hub module or
    keras-hub preset brings its own), ``"none"``/``None`` (random initialisation) or the
    path of a weights file (``.h5`` / ``.weights.h5``) loaded after building.  The model
    is named :attr:`BaseSpec.layer_name`.
    """
    spec = get_base_spec(spec_or_name)
    input_shape = spec.input_shape(image_size)
    resolved = resolve_weights(spec, weights)
    pretrained = resolved == "imagenet"
    if spec.kind == "hub":
        model = build_hub_base(spec.handle, input_shape, name=spec.layer_name, input_range=spec.input_range)
    elif spec.kind == "keras_hub":
        model = build_keras_hub_base(spec, input_shape, load_weights=pretrained)
    else:
        model = _build_application(spec, input_shape, "imagenet" if pretrained else None)
    if resolved not in (None, "imagenet"):
        load_weights_file(model, resolved)
    return model
