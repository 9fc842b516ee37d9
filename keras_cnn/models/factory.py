"""``create_model``: the one way kcnn builds a model, from-scratch architecture or transfer base.

``train``, ``transfer``, ``summary`` and ``demo`` build through :func:`create_model`;
``finetune``, ``evaluate`` and ``export`` reload saved runs through :func:`load_model`.
:func:`describe_models` is what ``kcnn models`` lists.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import keras

from keras_cnn.errors import UserError
from keras_cnn.models.bases import describe_bases
from keras_cnn.models.loading import load_model
from keras_cnn.models.specs import BaseSpec
from keras_cnn.models.scratch import ARCHITECTURES, build_architecture, describe_architectures, with_input_scaling
from keras_cnn.models.transfer import build_transfer_model
from keras_cnn.models.weights import load_weights_file

__all__ = ["DEFAULT_WEIGHTS", "create_model", "describe_models", "is_architecture", "load_model"]

# The pretrained weights where a base has them (ImageNet, a TF Hub module's or a keras-hub
# preset's own); random initialisation for a from-scratch architecture.
DEFAULT_WEIGHTS = "default"


def is_architecture(name: str) -> bool:
    """Whether ``name`` is a from-scratch architecture (else it names a transfer base)."""
    return isinstance(name, str) and name in ARCHITECTURES


def create_model(name: str | BaseSpec, num_classes: int | None = None, *, image_size: int | Sequence[int] | None = None,
                 input_shape: Sequence[int] | None = None, weights: str | os.PathLike | None = DEFAULT_WEIGHTS,
                 head_units: Sequence[int] = (), dropout: float = 0.2, binary: bool = False,
                 api: str = "functional", seed: int | None = None, input_scaling: bool = True,
                 multi_label: bool = False) -> keras.Model:
    """Build model ``name`` (uncompiled) for ``num_classes`` classes; it takes float pixels 0..255.

    ``name``: a from-scratch architecture (``lenet``, ``cifar10_net`` ...; see ``kcnn
    models``), a keras.applications base (``resnet50``, ``mobilenet_v3_small``,
    ``convnext_tiny`` ...), ``hub:URL_OR_DIR`` or ``keras_hub:PRESET_OR_DIR``.

    - ``image_size`` (N or (h, w)) or ``input_shape`` ((h, w, c)): default the model's own.
    - ``weights``: ``"default"`` (pretrained where there are any), ``"imagenet"``,
      ``"none"``/``None`` (random) or a weights file path.
    - Transfer bases only: ``head_units`` (hidden Dense layers of the new head),
      ``dropout``, ``binary`` (one sigmoid unit for two classes), ``seed``.
    - ``api``: ``"functional"`` or ``"sequential"`` (same layers).
    - ``input_scaling``: for a from-scratch architecture, put the 0..255 -> 0..1 scaling
      in front (kcnn's training does); ``False`` gives the bare reference network.
    - ``multi_label``: ``num_classes`` labels, any number per image: one sigmoid unit per
      label (trained with binary cross-entropy) in place of the softmax.
    """
    if is_architecture(name):
        return _create_architecture(name, num_classes, image_size, input_shape, weights, api, input_scaling,
                                    multi_label)
    if input_shape is not None:
        if len(input_shape) != 3 or int(input_shape[-1]) != 3:
            raise UserError(f"transfer bases take RGB images (height, width, 3), received: {tuple(input_shape)}")
        image_size = tuple(input_shape[:2])
    if num_classes is None:
        raise UserError(f"a transfer model needs the number of classes ({name})")
    pretrained = "imagenet" if weights == DEFAULT_WEIGHTS else weights
    return build_transfer_model(name, num_classes, image_size=image_size, weights=pretrained,
                                head_units=head_units, dropout=dropout, binary=binary, api=api, seed=seed,
                                multi_label=multi_label)


def _create_architecture(name, num_classes, image_size, input_shape, weights, api, input_scaling,
                         multi_label) -> keras.Model:
    spec = ARCHITECTURES[name]
    if input_shape is None and image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        input_shape = (*size, spec.input_shape[-1])
    model = build_architecture(name, input_shape, num_classes, api=api, multi_label=multi_label)
    if input_scaling:
        model = with_input_scaling(model)
    choice = "none" if weights is None else os.fspath(weights)
    if choice.lower() in (DEFAULT_WEIGHTS, "none"):
        return model
    if choice.lower() == "imagenet":
        raise UserError(f"{name} is a from-scratch architecture: it has no ImageNet weights")
    load_weights_file(model, choice)
    return model


def describe_models() -> list[dict[str, Any]]:
    """One row per from-scratch architecture and per keras.applications base, for ``kcnn models``."""
    return describe_architectures() + describe_bases()
