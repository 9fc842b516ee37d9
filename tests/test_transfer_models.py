"""Transfer models: head layout, both APIs, the reference trainable counts, unfreezing."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest

from keras_cnn.errors import UserError
from keras_cnn.models.transfer import (
    build_transfer_model,
    freeze_base,
    get_base_layer,
    parameter_counts,
    cut_at_features,
    unfreeze_from,
)

# REFERENCES.md section 2: InceptionV3, head Dense 1024 relu, no dropout, N classes.
CLASSES = 10
STAGE1_TRAINABLE = 2_098_176 + 1_025 * CLASSES
MIXED8_BN_FROZEN = 11_108_352
MIXED8_BN_TRAINED = 11_114_880
INCEPTION_TRAINABLE = 21_768_352


@pytest.fixture(scope="module")
def inception():
    return build_transfer_model("inception_v3", CLASSES, image_size=75, weights=None,
                                head_units=(1024,), dropout=0.0)


@pytest.fixture(scope="module")
def vgg_pair():
    """The same small VGG16 model built with both APIs, sharing weight values."""
    options = {"image_size": 32, "weights": None, "head_units": (8, 4), "dropout": 0.3, "seed": 7}
    functional = build_transfer_model("vgg16", 3, api="functional", **options)
    sequential = build_transfer_model("vgg16", 3, api="sequential", **options)
    sequential.set_weights(functional.get_weights())
    return functional, sequential


def test_inception_reference_counts(inception):
    counts = parameter_counts(inception)
    assert counts == {"trainable_params": STAGE1_TRAINABLE, "non_trainable_params": 21_802_784,
                      "total_params": 23_911_210}

    frozen_bn = unfreeze_from(inception, "mixed8")
    assert frozen_bn["trainable_params"] == STAGE1_TRAINABLE + MIXED8_BN_FROZEN
    assert frozen_bn["boundary_layer"] == "mixed8" and frozen_bn["boundary_index"] == 248

    trained_bn = unfreeze_from(inception, "mixed8", train_bn=True)
    assert trained_bn["trainable_params"] == STAGE1_TRAINABLE + MIXED8_BN_TRAINED == 13_223_306

    # Calling it again must undo the previous choice, not pile onto it.
    assert unfreeze_from(inception, "mixed8")["trainable_params"] == STAGE1_TRAINABLE + MIXED8_BN_FROZEN
    everything = unfreeze_from(inception, "all", train_bn=True)
    assert everything["trainable_params"] == STAGE1_TRAINABLE + INCEPTION_TRAINABLE
    assert everything["total_params"] == 23_911_210
    assert freeze_base(inception)["trainable_params"] == STAGE1_TRAINABLE


def test_parameter_counts_agree_with_summary(inception):
    lines: list[str] = []
    inception.summary(print_fn=lambda line, line_break=True: lines.append(line))
    text = "\n".join(lines)
    counts = parameter_counts(inception)
    assert f"Trainable params: {counts['trainable_params']:,}" in text
    assert f"Non-trainable params: {counts['non_trainable_params']:,}" in text


def test_unknown_layer_is_refused_with_the_nearest_name(inception):
    with pytest.raises(UserError) as caught:
        unfreeze_from(inception, "mixd8")
    message = str(caught.value)
    assert "'mixd8'; did you mean 'mixed8'?" in message and "\n" not in message and "'all'" in message
    assert parameter_counts(inception)["trainable_params"] == STAGE1_TRAINABLE  # nothing changed


def test_block_prefix_picks_the_first_layer_of_the_block():
    model = build_transfer_model("efficientnet_b0", 4, image_size=32, weights=None)
    with pytest.raises(UserError, match=r"'blok7a'; did you mean 'block7a'\?"):
        unfreeze_from(model, "blok7a")   # a misspelt block: the block is suggested, not its first layer
    result = unfreeze_from(model, "block7a")
    assert result["boundary_layer"] == "block7a_expand_conv"
    base = get_base_layer(model)
    trainable = [layer.name for layer in base.layers if layer.trainable and layer.weights]
    assert trainable[0] == "block7a_expand_conv" and "top_conv" in trainable
    assert not any(isinstance(base.get_layer(name), keras.layers.BatchNormalization) for name in trainable)

    features, head = cut_at_features(model)
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    # Eager calls: tracing EfficientNet for predict() would cost more than the whole check.
    pooled = features(images, training=False)
    assert tuple(pooled.shape) == (2, 1280)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(head(pooled, training=False)),
                               keras.ops.convert_to_numpy(model(images, training=False)), rtol=1e-5, atol=1e-6)
    assert head.get_layer("predictions") is model.get_layer("predictions")


def test_layer_names_and_head(vgg_pair):
    functional, sequential = vgg_pair
    names = [layer.name for layer in functional.layers]
    assert names == ["image", "preprocessing", "vgg16", "head_pool", "head_dense_1", "head_dense_2",
                     "head_dropout", "predictions"]
    assert [layer.name for layer in sequential.layers] == names[1:]  # Sequential hides its Input
    assert functional.get_layer("head_dense_1").activation.__name__ == "relu"
    assert functional.get_layer("predictions").activation.__name__ == "softmax"
    assert functional.get_layer("predictions").dtype_policy.compute_dtype == "float32"
    assert get_base_layer(functional).trainable is False
    assert functional.input_shape == (None, 32, 32, 3) and functional.output_shape == (None, 3)


def test_functional_and_sequential_agree(vgg_pair):
    functional, sequential = vgg_pair
    assert parameter_counts(functional) == parameter_counts(sequential)
    images = np.random.default_rng(1).uniform(0, 255, (3, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(sequential.predict(images, verbose=0), functional.predict(images, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert unfreeze_from(functional, "block5_conv1") == unfreeze_from(sequential, "block5_conv1")


def test_binary_head_and_option_checks():
    model = build_transfer_model("vgg16", 2, image_size=32, weights=None, binary=True, dropout=0.0)
    assert model.output_shape == (None, 1)
    assert model.get_layer("predictions").activation.__name__ == "sigmoid"
    with pytest.raises(UserError, match="exactly 2 classes, received: 3"):
        build_transfer_model("vgg16", 3, image_size=32, weights=None, binary=True)
    with pytest.raises(UserError, match="at least 2 classes"):
        build_transfer_model("vgg16", 1, image_size=32, weights=None)
    with pytest.raises(UserError, match="unknown model API 'subclass'"):
        build_transfer_model("vgg16", 2, image_size=32, weights=None, api="subclass")
    with pytest.raises(UserError, match="dropout"):
        build_transfer_model("vgg16", 2, image_size=32, weights=None, dropout=1.5)


def test_mixed_precision_keeps_float32_output():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_transfer_model("vgg16", 3, image_size=32, weights=None, head_units=(4,))
    finally:
        keras.config.set_dtype_policy(previous)
    assert model.get_layer("head_dense_1").compute_dtype == "float16"
    assert model.output.dtype == "float32"


def test_not_a_transfer_model():
    inputs = keras.Input((4,))
    plain = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    with pytest.raises(UserError, match="not a kcnn transfer model"):
        unfreeze_from(plain, "all")
