"""Discriminative learning rates (--lr-mult): blocks, factors, and the size of real updates."""

import numpy as np
import pytest

from keras_cnn.errors import UserError
from keras_cnn.train.discriminative import block_name, layer_rate_class, layer_rate_factors, trainable_base_blocks


@pytest.mark.parametrize("layer, block", [
    ("block7a_expand_conv", "block7a"), ("block5_conv1", "block5"), ("block_16_project", "block_16"),
    ("conv5_block3_1_conv", "conv5_block3"), ("mixed9_0", "mixed9"), ("conv2d_85", None), ("top_conv", None),
])
def test_block_names_are_read_from_layer_names(layer, block):
    assert block_name(layer) == block


@pytest.fixture(scope="module")
def vgg_from_block4():
    from keras_cnn.models.transfer import build_transfer_model, unfreeze_from

    model = build_transfer_model("vgg16", 3, image_size=32, weights="none")
    unfreeze_from(model, "block4_conv1")
    return model


def test_rates_grow_geometrically_from_the_first_unfrozen_block_to_the_head(vgg_from_block4):
    assert [name for name, _ in trainable_base_blocks(vgg_from_block4)] == ["block4", "block5"]
    factors, summary = layer_rate_factors(vgg_from_block4, 9.0)
    assert [row["block"] for row in summary] == ["block4", "block5", "head"]
    np.testing.assert_allclose([row["factor"] for row in summary], [1 / 9, 1 / 3, 1])
    assert len(factors) == len(vgg_from_block4.trainable_weights)
    assert factors["predictions/kernel"] == 1.0


def test_an_lr_mult_below_one_is_refused(vgg_from_block4):
    with pytest.raises(UserError, match="--lr-mult"):
        layer_rate_factors(vgg_from_block4, 0.5)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_groups_updates_differ_by_the_expected_factor(optimizer):
    import keras
    import tensorflow as tf

    from keras_cnn.optimizers import make_optimizer

    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(1, name="late")(keras.layers.Dense(2, name="early")(inputs))
    model = keras.Model(inputs, outputs)
    base = make_optimizer(optimizer, 0.01)
    scaled = layer_rate_class(type(base)).from_config(
        {**base.get_config(), "rate_factors": {"early/kernel": 0.25, "early/bias": 0.25}})
    before = [variable.numpy().copy() for variable in model.trainable_weights]
    with tf.GradientTape() as tape:
        loss = keras.ops.mean((model(np.ones((4, 3), "float32")) - 1.0) ** 2)
    gradients = tape.gradient(loss, model.trainable_weights)
    scaled.apply(gradients, model.trainable_weights)
    steps = {variable.path: np.abs(old - variable.numpy()).max() / 0.01
             for old, variable in zip(before, model.trainable_weights)}
    if optimizer == "sgd":   # update = rate x factor x gradient
        steps = {variable.path: steps[variable.path] / np.abs(gradient.numpy()).max()
                 for variable, gradient in zip(model.trainable_weights, gradients)}
    # Adam's first step moves every weight by about its rate, whatever the gradient.
    assert steps["late/kernel"] == pytest.approx(1.0, rel=1e-3)
    assert steps["early/kernel"] == pytest.approx(0.25, rel=1e-3)
    assert steps["early/kernel"] / steps["late/kernel"] == pytest.approx(0.25, rel=1e-3)
