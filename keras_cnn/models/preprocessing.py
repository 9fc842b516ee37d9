"""The layer in front of a base that turns 0..255 RGB pixels into what its weights expect.

Every kcnn model takes float pixels in 0..255, so exported models take raw images.  Each
mode gives the same numbers as the matching ``keras.applications.<family>.preprocess_input``
for channels-last images (checked by the tests).  The layers are registered Keras
serializable classes (``kcnn>...``) so a saved ``.keras`` run reloads; exports are traced
graphs and need none of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras

from keras_cnn.errors import UserError
from keras_cnn.models.specs import PREPROCESSING_MODES, BaseSpec

# ImageNet channel means in BGR order, as keras.applications' "caffe" mode subtracts them.
CAFFE_BGR_MEANS = (103.939, 116.779, 123.68)
# ImageNet RGB mean and standard deviation of 0..1 pixels, keras.applications' "torch" mode.
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)


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


@keras.saving.register_keras_serializable(package="kcnn")
class ChannelAffine(keras.layers.Layer):
    """``inputs * scale + offset``, each a number or one value per channel.

    Serves the "torch" mode (``scale = 1 / (255 * std)``, ``offset = -mean / std``) and a
    keras-hub image converter (its own ``scale`` and ``offset``).
    """

    def __init__(self, scale: float | Sequence[float] = 1.0, offset: float | Sequence[float] = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = _as_floats(scale)
        self.offset = _as_floats(offset)

    def call(self, inputs):
        scale = keras.ops.convert_to_tensor(self.scale, dtype=inputs.dtype)
        offset = keras.ops.convert_to_tensor(self.offset, dtype=inputs.dtype)
        return inputs * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "scale": self.scale, "offset": self.offset}


def _as_floats(value) -> float | list[float]:
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return [float(item) for item in value]
    except TypeError:
        raise UserError(f"scale and offset must be numbers or one number per channel, received: {value!r}") from None


def torch_scale_offset() -> tuple[list[float], list[float]]:
    """(scale, offset) per channel that map 0..255 RGB like keras.applications' "torch" mode."""
    scale = [1.0 / (255.0 * std) for std in TORCH_STD]
    offset = [-mean / std for mean, std in zip(TORCH_MEAN, TORCH_STD, strict=True)]
    return scale, offset


def preprocessing_for(spec: BaseSpec) -> keras.layers.Layer | None:
    """The layer mapping float 0..255 pixels to what ``spec``'s weights expect (``None``: none needed)."""
    mode = spec.preprocessing
    if mode == "caffe":
        return CaffePreprocessing(name="preprocessing")
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocessing")
    if mode == "torch":
        torch_scale, torch_offset = torch_scale_offset()
        return ChannelAffine(torch_scale, torch_offset, name="preprocessing")
    if mode == "none":
        return None
    raise UserError(f"base {spec.name} has unknown preprocessing {mode!r}; expected one of {PREPROCESSING_MODES}")
