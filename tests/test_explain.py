"""Opening kcnn's models (their logits and last spatial feature map, found from their structure) and Grad-CAM."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_cnn.explain import explain_images  # noqa: E402
from keras_cnn.models.factory import create_model  # noqa: E402
from keras_cnn.models.opened import open_model  # noqa: E402
from keras_cnn.models.scratch import ARCHITECTURES  # noqa: E402

FEATURE_LAYER_CLASSES = (keras.layers.Conv2D, keras.layers.Activation, keras.layers.ReLU,
                         keras.layers.BatchNormalization, keras.layers.SeparableConv2D, keras.layers.Add)


def pixels(model, count=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, *model.input_shape[1:])).astype("float32")


def check_opened(model):
    """The opened graph computes the model's output, its logits give it back, and a feature map was found."""
    opened = open_model(model)
    images = pixels(model)
    outputs = opened.graph(images)
    np.testing.assert_array_equal(np.asarray(outputs["output"]), np.asarray(model(images)))
    logits = np.asarray(opened.logits(outputs["penultimate"]), dtype=np.float64)
    if opened.activation == "sigmoid":
        rebuilt = 1 / (1 + np.exp(-logits))
    else:
        rebuilt = np.exp(logits - logits.max(axis=1, keepdims=True))
        rebuilt /= rebuilt.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(rebuilt, np.asarray(model(images)), atol=2e-6)
    assert opened.has_feature_map, opened.no_feature_map
    height, width, _ = opened.feature_shape
    assert height > 1 and width > 1
    return opened


@pytest.mark.parametrize("api", ["functional", "sequential"])
@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_every_scratch_net_opens_to_its_last_convolution(name, api):
    model = create_model(name, 2 if name == "smile_cnn" else 10, api=api)
    opened = check_opened(model)
    # The map of the last convolution, before pooling halves it: no layer with filters lies between it
    # and the output's Flatten/Dense part, and nothing of a larger size follows it.
    layer = next(layer for layer in opened.graph.layers if layer.name == opened.feature_layer)
    assert isinstance(layer, FEATURE_LAYER_CLASSES), type(layer)
    assert opened.layers_opened == [model.name, name]     # the scaling wrapper and the architecture


@pytest.mark.parametrize("base, api, feature_layer", [
    ("vgg16", "functional", "block5_conv3"),           # a chain: the last convolution, not block5_pool
    ("resnet50", "sequential", "conv5_block3_out"),    # residual blocks: the output after the last Add
    ("efficientnet_b0", "functional", "top_activation"),
])
def test_transfer_bases_open_to_the_usual_grad_cam_layer(base, api, feature_layer):
    model = create_model(base, 3, image_size=64, weights="none", api=api)
    opened = check_opened(model)
    assert opened.feature_layer == feature_layer
    assert opened.feature_shape[:2] == ((4, 4) if base == "vgg16" else (2, 2))


def test_a_binary_transfer_model_has_one_sigmoid_logit():
    model = create_model("vgg16", 2, image_size=32, weights="none", binary=True)
    opened = check_opened(model)
    assert opened.activation == "sigmoid"
    explained = explain_images(opened, pixels(model, 3))
    np.testing.assert_allclose(np.asarray(explained["probabilities"]).sum(axis=1), 1.0, atol=1e-6)


def test_a_hub_module_keeps_its_feature_map_inside_and_says_so(tmp_path):
    from conftest import write_hub_module

    hub = write_hub_module(tmp_path / "hub")
    model = create_model(f"hub:{hub}", 3, image_size=32)
    opened = open_model(model)
    np.testing.assert_array_equal(np.asarray(opened.graph(pixels(model))["output"]), np.asarray(model(pixels(model))))
    assert not opened.has_feature_map
    assert "HubFeatureLayer" in opened.no_feature_map and "pooled" in opened.no_feature_map
    with pytest.raises(ValueError, match="no heat map"):
        explain_images(opened, pixels(model))


def hand_model(outputs: int):
    """8x8 grey images scaled to -1..1; two 1x1 filters (x and -x) through a ReLU; the mean of each map
    is a feature; the classifier reads them with fixed weights.  Grad-CAM of this model is known exactly."""
    inputs = keras.Input((8, 8, 1))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1.0)(inputs)
    maps = keras.layers.Conv2D(2, 1, activation="relu", use_bias=False, name="maps")(scaled)
    pooled = keras.layers.GlobalAveragePooling2D()(maps)
    head = keras.layers.Dense(outputs, activation="softmax" if outputs == 2 else "sigmoid", name="predictions")
    model = keras.Model(inputs, head(pooled))
    model.get_layer("maps").set_weights([np.array([[[[1.0, -1.0]]]], np.float32)])
    weights = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32) if outputs == 2 else np.array([[1.0], [-1.0]], np.float32)
    head.set_weights([weights, np.zeros(outputs, np.float32)])
    return model


@pytest.mark.parametrize("outputs", [2, 1])
def test_grad_cam_is_the_positive_part_of_the_gradient_weighted_map(outputs):
    # Class 0 is read from relu(x), class 1 from relu(-x): the map of class 0 is relu(x) / max, of
    # class 1 relu(-x) / max (for one sigmoid unit, class 1's logit is mean relu(x) - mean relu(-x),
    # class 0's its negation: the same maps, swapped).
    image = np.full((1, 8, 8, 1), 127.5, np.float32)
    image[0, 1, 2, 0], image[0, 5, 6, 0], image[0, 6, 1, 0] = 255.0, 191.25, 0.0
    signed = image[0, ..., 0] / 127.5 - 1.0
    model = hand_model(outputs)
    opened = open_model(model)
    assert opened.feature_layer == "maps"
    bright, dark = np.maximum(signed, 0), np.maximum(-signed, 0)
    if outputs == 1:
        bright, dark = dark, bright
    for class_index, expected in ((0, bright / bright.max()), (1, dark / dark.max())):
        explained = explain_images(opened, image, class_index=[class_index])
        np.testing.assert_allclose(np.asarray(explained["heatmap"])[0], expected, atol=1e-6)
    # Unasked, the class explained is the one predicted; the temperature changes the probabilities only.
    plain = explain_images(opened, image)
    scaled = explain_images(opened, image, temperature=3.0)
    assert int(plain["class_index"][0]) == int(np.asarray(plain["probabilities"])[0].argmax())
    np.testing.assert_allclose(np.asarray(plain["heatmap"]), np.asarray(scaled["heatmap"]), atol=1e-6)
    assert np.asarray(scaled["probabilities"]).max() < np.asarray(plain["probabilities"]).max()
    # What an export writes: the same layers, the logits divided by T, the model's own output form.
    calibrated = np.asarray(opened.calibrated_model(3.0)(image), np.float64)
    logit = np.asarray(opened.logits(opened.graph(image)["penultimate"]), np.float64)
    expected_output = (1 / (1 + np.exp(-logit / 3.0)) if outputs == 1
                       else np.exp(logit / 3.0) / np.exp(logit / 3.0).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(calibrated, expected_output, atol=1e-6)
    assert calibrated.shape == np.asarray(model(image)).shape


@pytest.mark.slow
def test_every_keras_applications_base_opens_at_its_default_size():
    from keras_cnn.models.bases import BASES

    for name in sorted(BASES):
        model = create_model(name, 3, weights="none")
        opened = open_model(model)
        assert opened.has_feature_map, f"{name}: {opened.no_feature_map}"
        assert min(opened.feature_shape[:2]) >= 7, (name, opened.feature_layer, opened.feature_shape)
        keras.backend.clear_session()
