"""Splitting a partly unfrozen transfer model at its frozen boundary (keras_cnn.models.boundary)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_cnn.models.boundary import NoSingleBoundary, cut_at_frozen_boundary
from keras_cnn.models.transfer import build_transfer_model, unfreeze_from


def hand_built_transfer_model(application, size: int, classes: int = 3) -> keras.Model:
    """image -> keras.applications base (training=False) -> pooling -> softmax, as kcnn builds them."""
    keras.utils.set_random_seed(0)
    base = application(include_top=False, weights=None, input_shape=(size, size, 3))
    image = keras.Input((size, size, 3), name="image")
    features = keras.layers.Rescaling(1 / 127.5, offset=-1, name="preprocessing")(image)
    outputs = base(features, training=False)
    outputs = keras.layers.GlobalAveragePooling2D(name="head_pool")(outputs)
    outputs = keras.layers.Dense(classes, activation="softmax", name="predictions")(outputs)
    return keras.Model(image, outputs, name="hand_built")


def assert_cut_reproduces(model, boundary_layer: str, shape: tuple, seed: int = 1):
    cut = cut_at_frozen_boundary(model)
    assert cut.boundary_layer == boundary_layer
    assert cut.boundary_shape == shape
    assert cut.bytes_per_image == 4 * int(np.prod(shape))
    images = np.random.default_rng(seed).uniform(0, 255, (2, *model.input_shape[1:])).astype("float32")
    whole = np.asarray(model(images, training=False))
    np.testing.assert_allclose(np.asarray(cut.top(cut.bottom(images), training=False)), whole,
                               rtol=1e-5, atol=1e-6)
    # Weights are shared, not copied: every trainable weight of the whole model is in the top,
    # the bottom has none, and changing a top weight changes the whole model.
    assert not cut.bottom.trainable_weights
    assert {id(weight) for weight in cut.top.trainable_weights} == {id(weight) for weight in model.trainable_weights}
    kernel = model.get_layer("predictions").kernel
    kernel.assign(kernel.numpy() * 2.0)
    np.testing.assert_allclose(np.asarray(cut.top(cut.bottom(images), training=False)),
                               np.asarray(model(images, training=False)), rtol=1e-5, atol=1e-6)
    return cut


@pytest.fixture(scope="module")
def efficientnet():
    return build_transfer_model("efficientnet_b0", 3, image_size=32, weights=None, seed=0)


def test_efficientnet_block7a_splits_after_block6(efficientnet):
    unfreeze_from(efficientnet, "block7a")
    assert_cut_reproduces(efficientnet, "block6d_add", (1, 1, 192))


@pytest.mark.slow
def test_inception_mixed8_splits_at_mixed8():
    model = build_transfer_model("inception_v3", 3, image_size=75, weights=None, seed=0)
    # The Keras guide's recipe: everything up to and including mixed8 stays frozen.
    unfreeze_from(model, "mixed8")
    assert_cut_reproduces(model, "mixed8", (1, 1, 1280))


@pytest.mark.parametrize("application, size, boundary, layer, shape", [
    (keras.applications.VGG16, 32, "block5_conv1", "block4_pool", (2, 2, 512)),
    pytest.param(keras.applications.ResNet50, 64, "conv5_block1", "conv4_block6_out", (4, 4, 1024),
                 marks=pytest.mark.slow),
    pytest.param(keras.applications.MobileNetV2, 64, "block_16", "block_15_add", (2, 2, 160),
                 marks=pytest.mark.slow),
])
def test_stage_and_block_boundaries_of_other_bases(application, size, boundary, layer, shape):
    model = hand_built_transfer_model(application, size)
    unfreeze_from(model, boundary)
    assert_cut_reproduces(model, layer, shape)


def test_a_boundary_inside_a_residual_block_moves_down_to_the_block_input(efficientnet):
    # block6b's shortcut jumps over block6b_project_conv: the top also reads block6a's output,
    # so the cut is made there and the frozen layers of block6b are recomputed with the top.
    unfreeze_from(efficientnet, "block6b_project_conv")
    assert_cut_reproduces(efficientnet, "block6a_project_bn", (1, 1, 192))


def test_nothing_frozen_is_refused_with_a_reason(efficientnet):
    unfreeze_from(efficientnet, "all")
    with pytest.raises(NoSingleBoundary, match="nothing trainable in the base efficientnet_b0 is frozen"):
        cut_at_frozen_boundary(efficientnet)


@pytest.mark.slow
def test_densenet_block_boundary_recomputes_the_frozen_batch_norm_with_the_top():
    model = hand_built_transfer_model(keras.applications.DenseNet121, 32)
    unfreeze_from(model, "conv5_block1")
    assert_cut_reproduces(model, "pool4_pool", (1, 1, 512))


def tiny_sequential_transfer_model(with_dropout: bool) -> keras.Model:
    """A Sequential model passes training=True to its base while fitting (kcnn's api="sequential")."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    hidden = keras.layers.Conv2D(4, 3, name="frozen_conv")(inputs)
    if with_dropout:
        hidden = keras.layers.Dropout(0.5, name="frozen_dropout")(hidden)
    base = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="trained_conv")(hidden), name="tiny_base")
    model = keras.Sequential([keras.Input((8, 8, 3)), base, keras.layers.GlobalAveragePooling2D(name="head_pool"),
                              keras.layers.Dense(2, activation="softmax", name="predictions")])
    unfreeze_from(model, "trained_conv")
    return model


def test_a_sequential_model_with_dropout_in_the_frozen_part_is_refused():
    with pytest.raises(NoSingleBoundary, match=r"training mode .*\(frozen_dropout\)"):
        cut_at_frozen_boundary(tiny_sequential_transfer_model(with_dropout=True))
    assert_cut_reproduces(tiny_sequential_transfer_model(with_dropout=False), "frozen_conv", (6, 6, 4))
