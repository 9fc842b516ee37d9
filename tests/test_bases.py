"""The transfer-base registry: reference sizes, preprocessing, weights resolution."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import dataclasses
import tempfile

import keras
import numpy as np
import pytest

from keras_cnn.errors import UserError
from keras_cnn.models import bases, weights
from keras_cnn.models.bases import BASES, build_base, describe_bases, get_base_spec, preprocessing_layer

# Small inputs keep the builds fast; the counts do not depend on the size (no top).
SMALL_SIZES = {"vgg16": 32, "inception_v3": 75, "efficientnet_b0": 32}


@pytest.fixture(scope="module")
def built_bases():
    """name -> base built with weights=None at a small size, each built once per module."""
    cache: dict[str, keras.Model] = {}

    def get(name: str) -> keras.Model:
        if name not in cache:
            cache[name] = build_base(name, SMALL_SIZES[name], weights=None)
        return cache[name]

    return get


def test_registry_lists_the_first_three_bases_with_reference_numbers():
    assert {"vgg16", "inception_v3", "efficientnet_b0"} <= set(BASES)
    described = {entry["name"]: entry for entry in describe_bases()}
    assert described["vgg16"] == {
        "name": "vgg16", "kind": "transfer", "family": "vgg", "input_shape": [224, 224, 3], "params": 14_714_688,
        "top1": 71.3, "feature_width": 512, "preprocessing": "caffe", "default_unfreeze": "block5_conv1",
        "min_image_size": 32,
    }
    assert described["inception_v3"]["params"] == 21_802_784
    assert described["inception_v3"]["input_shape"] == [299, 299, 3]
    assert described["inception_v3"]["default_unfreeze"] == "mixed8"
    assert described["efficientnet_b0"]["params"] == 4_049_571
    assert described["efficientnet_b0"]["preprocessing"] == "none"


def test_preprocessing_layers_reload_from_keras_file(tmp_path):
    pixels = np.random.default_rng(4).uniform(0, 255, (2, 4, 4, 3)).astype("float32")
    for name in ("vgg16", "inception_v3", "densenet121"):
        inputs = keras.Input((4, 4, 3))
        model = keras.Model(inputs, preprocessing_layer(BASES[name])(inputs))
        path = tmp_path / f"{name}.keras"
        model.save(path)
        reloaded = keras.models.load_model(path)  # safe mode: no Lambda layers involved
        np.testing.assert_allclose(reloaded.predict(pixels, verbose=0), model.predict(pixels, verbose=0))


def test_unknown_base_and_hub_names():
    with pytest.raises(UserError, match="unknown base 'resnet'.*kcnn models.*resnet50"):
        get_base_spec("resnet")
    spec = get_base_spec("hub:https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1")
    assert spec.kind == "hub" and spec.hub_handle.startswith("https://tfhub.dev/")
    assert get_base_spec("EfficientNet_B0") is BASES["efficientnet_b0"]


def test_image_size_checks():
    assert BASES["inception_v3"].input_shape(None) == (299, 299, 3)
    assert BASES["vgg16"].input_shape((64, 96)) == (64, 96, 3)
    with pytest.raises(UserError, match="at least 75x75.*74x74"):
        BASES["inception_v3"].input_shape(74)
    with pytest.raises(UserError, match="image size"):
        BASES["vgg16"].input_shape("big")


def test_weights_urls_match_keras_applications():
    from keras.src.applications import efficientnet, inception_v3, vgg16

    assert BASES["vgg16"].weights_url == vgg16.WEIGHTS_PATH_NO_TOP
    assert BASES["inception_v3"].weights_url == inception_v3.WEIGHTS_PATH_NO_TOP
    assert BASES["efficientnet_b0"].weights_url == efficientnet.BASE_WEIGHTS_PATH + "efficientnetb0_notop.h5"
    for name in ("vgg16", "inception_v3", "efficientnet_b0", "resnet50", "convnext_tiny", "densenet121"):
        assert BASES[name].weights_url.endswith("/" + BASES[name].weights_file)


@pytest.fixture
def empty_keras_cache(monkeypatch, tmp_path):
    """An empty Keras cache and no network."""
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    monkeypatch.setattr(weights, "can_download", lambda url, timeout=3.0: False)
    return tmp_path / "keras_home" / "models"


def test_offline_imagenet_fails_before_building(empty_keras_cache, monkeypatch):
    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before the weights check")

    monkeypatch.setattr(keras.applications, "VGG16", must_not_build)
    with pytest.raises(UserError) as caught:
        build_base("vgg16", 32, weights="imagenet")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("ImageNet weights for vgg16 are not cached and cannot be downloaded")
    assert BASES["vgg16"].weights_file in message and str(empty_keras_cache) in message
    assert "--weights PATH" in message and "--weights none" in message
    assert not weights.imagenet_weights_available(BASES["vgg16"])


def test_cached_imagenet_file_needs_no_network(empty_keras_cache, monkeypatch):
    def no_network(url, timeout=3.0):
        raise AssertionError("looked for the network although the file is cached")

    monkeypatch.setattr(weights, "can_download", no_network)
    empty_keras_cache.mkdir(parents=True)
    (empty_keras_cache / BASES["efficientnet_b0"].weights_file).write_bytes(b"weights")
    assert weights.resolve_weights(BASES["efficientnet_b0"], "imagenet") == "imagenet"
    assert weights.imagenet_weights_available(BASES["efficientnet_b0"])


def test_weights_choices(tmp_path):
    spec = BASES["vgg16"]
    assert weights.resolve_weights(spec, "none") is None
    assert weights.resolve_weights(spec, None) is None
    with pytest.raises(UserError, match="is not a file"):
        weights.resolve_weights(spec, str(tmp_path / "missing.weights.h5"))
    broken = tmp_path / "broken.weights.h5"
    broken.write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="cannot load weights from"):
        build_base("efficientnet_b0", 32, weights=broken)


def test_weights_path_round_trip(built_bases, tmp_path):
    model = built_bases("efficientnet_b0")  # the smallest weights file
    # Keras 3 format (.weights.h5) and the legacy .h5 layout keras.applications ships.
    modern = tmp_path / "b0.weights.h5"
    model.save_weights(modern)
    legacy = tmp_path / "b0_notop.h5"
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(legacy, "w") as handle:
        legacy_h5_format.save_weights_to_hdf5_group(handle, model)
    for path in (modern, legacy):
        loaded = build_base("efficientnet_b0", 48, weights=str(path))
        for expected, actual in zip(model.weights, loaded.weights):
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(actual), keras.ops.convert_to_numpy(expected))


def test_spec_is_frozen_and_kinds():
    spec = BASES["vgg16"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.params = 1  # type: ignore[misc]
    assert spec.kind == "keras" and spec.layer_name == "vgg16"
    assert bases.is_hub_name("hub:x") and not bases.is_hub_name("vgg16")
