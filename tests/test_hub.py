"""TF Hub bases inside Keras 3 models, through a hub-format SavedModel the test writes."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import HUB_FEATURES, write_hub_module
from keras_cnn.errors import UserError
from keras_cnn.models import hub
from keras_cnn.models.bases import get_base_spec
from keras_cnn.models.frozen import TransferBase
from keras_cnn.models.loading import load_model
from keras_cnn.models.transfer import (
    build_transfer_model,
    get_base_layer,
    parameter_counts,
    cut_at_features,
    unfreeze_from,
)
from keras_cnn.optimizers import make_optimizer

IMAGE_SIZE = 16
FEATURES = HUB_FEATURES


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory):
    return write_hub_module(tmp_path_factory.mktemp("hub") / "tiny_feature_vector")


def images(count=4, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (count, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")


def offline_resolve(handle):
    raise OSError("<urlopen error [Errno -2] Name or service not known>")


def test_resolve_local_directory_and_bad_handles(hub_dir, tmp_path):
    assert hub.resolve_hub_handle(hub_dir) == os.path.abspath(hub_dir)
    assert hub.resolve_hub_handle("hub:" + hub_dir) == os.path.abspath(hub_dir)
    with pytest.raises(UserError, match="neither a URL nor an existing SavedModel"):
        hub.resolve_hub_handle(str(tmp_path / "missing"))
    with pytest.raises(UserError, match="no saved_model.pb"):
        hub.resolve_hub_handle(str(tmp_path))


def test_url_offline_fails_with_one_line_hint(monkeypatch, tmp_path):
    import tensorflow_hub

    monkeypatch.setattr(tensorflow_hub, "resolve", offline_resolve)
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    with pytest.raises(UserError) as caught:
        hub.resolve_hub_handle("https://tfhub.dev/tensorflow/efficientnet/b0/feature-vector/1")
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path) in message and "hub:/path/to/savedmodel" in message


def test_url_served_from_tfhub_cache(monkeypatch, hub_dir, tmp_path):
    """A module already in $TFHUB_CACHE_DIR resolves without network (tensorflow_hub's own cache)."""
    import hashlib
    import shutil

    url = "https://tfhub.dev/example/tiny-feature-vector/1"
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path))
    cached = tmp_path / hashlib.sha1(url.encode("utf8")).hexdigest()
    shutil.copytree(hub_dir, cached)
    assert os.path.samefile(hub.resolve_hub_handle("hub:" + url), cached)


def test_hub_spec_from_name(hub_dir):
    spec = get_base_spec("hub:" + hub_dir)
    assert spec.kind == "hub" and spec.hub_handle == hub_dir and spec.layer_name == "hub_base"
    assert spec.input_range == (0.0, 1.0) and spec.preprocessing == "none"


def test_layer_scales_input_range_and_exposes_variables(hub_dir):
    module = tf.saved_model.load(hub_dir)
    batch = images()
    expected = module(batch / 255.0 * 2.0 - 1.0, training=False).numpy()
    layer = hub.HubFeatureLayer(hub_dir, input_range=(-1, 1))
    np.testing.assert_allclose(layer(batch).numpy(), expected, rtol=1e-5, atol=1e-5)
    names = [weight.name for weight in layer.weights]
    assert names == ["conv_Conv1_kernel", "conv_Conv1_bias", "stem_bn_gamma", "stem_bn_beta", "stem_bn_moving_mean"]
    assert all(":" not in weight.path for weight in layer.weights)
    # BatchNorm scale/offset are recognised and frozen by default, as for Keras bases.
    assert [weight.name for weight in layer.trainable_weights] == ["conv_Conv1_kernel", "conv_Conv1_bias"]
    layer.train_batch_norm = True
    assert len(layer.trainable_weights) == 4
    assert [weight.name for weight in layer.non_trainable_weights] == ["stem_bn_moving_mean"]


def test_batch_norm_variable_names():
    for name in ("stem_bn/gamma:0", "efficientnet-b0/blocks_0/tpu_batch_normalization/beta:0",
                 "MobilenetV2/Conv/BatchNorm/gamma:0", "block1a_bn/beta"):
        assert hub.is_batch_norm_variable(name), name
    for name in ("Conv1_kernel:0", "dense/bias:0", "layer_norm/gamma:0", "stem_conv/kernel"):
        assert not hub.is_batch_norm_variable(name), name


def test_reload_with_module_gone_is_one_line(hub_dir, tmp_path):
    import shutil

    copy = tmp_path / "module_copy"
    shutil.copytree(hub_dir, copy)
    path = tmp_path / "model.keras"
    build_transfer_model("hub:" + str(copy), 2, image_size=IMAGE_SIZE).save(path)
    shutil.rmtree(copy)
    with pytest.raises(UserError) as caught:
        load_model(path)
    message = str(caught.value)
    assert "\n" not in message and "neither a URL nor an existing SavedModel directory" in message


@pytest.mark.parametrize("api", ["functional", "sequential"])
def test_hub_transfer_model_stage1_counts(hub_dir, api):
    model = build_transfer_model("hub:" + hub_dir, 3, image_size=IMAGE_SIZE, head_units=(5,), dropout=0.1, api=api)
    head = (FEATURES * 5 + 5) + (5 * 3 + 3)
    module_params = 3 * 3 * 3 * FEATURES + 4 * FEATURES
    assert parameter_counts(model) == {
        "trainable_params": head, "non_trainable_params": module_params, "total_params": head + module_params,
    }
    assert get_base_layer(model).name == "hub_base" and isinstance(get_base_layer(model), TransferBase)
    assert model.predict(images(), verbose=0).shape == (4, 3)


def test_hub_model_saves_reloads_and_fine_tunes(hub_dir, tmp_path):
    model = build_transfer_model("hub:" + hub_dir, 2, image_size=IMAGE_SIZE, dropout=0.0, seed=1)
    batch, labels = images(8, seed=1), np.array([0, 1] * 4)
    before = model.predict(batch, verbose=0)

    path = tmp_path / "model.keras"
    model.save(path)
    reloaded = load_model(path, compile=True)
    np.testing.assert_allclose(reloaded.predict(batch, verbose=0), before, rtol=1e-5, atol=1e-6)
    assert parameter_counts(reloaded) == parameter_counts(model)  # still frozen after the reload

    counts = unfreeze_from(reloaded, "all")
    assert counts["trainable_params"] == (3 * 3 * 3 * FEATURES + FEATURES) + (FEATURES * 2 + 2)
    layer = get_base_layer(reloaded).get_layer("hub_module")
    kernel = next(weight for weight in layer.trainable_weights if weight.name == "conv_Conv1_kernel")
    start = kernel.numpy().copy()
    reloaded.compile(make_optimizer("adam", 1e-2), "sparse_categorical_crossentropy")
    reloaded.fit(batch, labels, epochs=1, batch_size=8, verbose=0)
    assert np.abs(kernel.numpy() - start).max() > 1e-4

    # The fine-tuned module weights (and the optimizer) round-trip through .keras too.
    tuned = reloaded.predict(batch, verbose=0)
    reloaded.save(path)
    again = load_model(path, compile=True)
    np.testing.assert_allclose(again.predict(batch, verbose=0), tuned, rtol=1e-5, atol=1e-6)
    assert type(again.optimizer).__name__ == "Adam" and again.optimizer.__module__ == "keras_cnn.optimizers"


def tfsm_model(hub_dir):
    """The module through keras.layers.TFSMLayer, whose weights keep TF's ':0' names."""
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    module = keras.layers.TFSMLayer(hub_dir, call_endpoint="__call__", trainable=True)
    outputs = keras.layers.Dense(2, activation="softmax")(module(inputs))
    return keras.Model(inputs, outputs), module


@pytest.mark.parametrize("optimizer", [("adam", {}), ("sgd", {"momentum": 0.9})])
def test_tfsm_layer_trains_with_kcnn_optimizers(hub_dir, optimizer):
    name, options = optimizer
    batch, labels = images(4) / 255.0, np.array([0, 1, 0, 1])
    model, module = tfsm_model(hub_dir)
    assert any(":" in weight.name for weight in module.trainable_weights)
    model.compile(make_optimizer(name, 1e-2, **options), "sparse_categorical_crossentropy")
    before = [weight.numpy().copy() for weight in module.trainable_weights]
    model.fit(batch, labels, epochs=1, verbose=0)
    assert all(np.abs(weight.numpy() - start).max() > 0 for weight, start in zip(module.trainable_weights, before))


def test_stock_keras_optimizer_fails_on_restored_names(hub_dir):
    """Why keras_cnn.optimizers exists (Keras 3.15); if this starts passing, the fix can go."""
    model, _ = tfsm_model(hub_dir)
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    with pytest.raises(ValueError, match="not a valid scope name"):
        model.fit(images(4) / 255.0, np.array([0, 1, 0, 1]), epochs=1, verbose=0)


@pytest.mark.parametrize("train_bn", [False, True])
def test_train_bn_runs_module_in_training_mode(hub_dir, train_bn):
    model = build_transfer_model("hub:" + hub_dir, 2, image_size=IMAGE_SIZE, dropout=0.0, api="sequential")
    unfreeze_from(model, "all", train_bn=train_bn)
    layer = get_base_layer(model).get_layer("hub_module")
    moving_mean = next(weight for weight in layer.weights if weight.name == "stem_bn_moving_mean")
    assert len(layer.trainable_weights) == (4 if train_bn else 2)
    model.compile(make_optimizer("sgd", 1e-2, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(images(4), np.array([0, 1, 0, 1]), epochs=1, verbose=0)
    # Sequential passes training=True to the base during fit; only with --train-bn does the
    # module run in training mode and update its statistics.
    assert (np.abs(moving_mean.numpy()).max() > 0) == train_bn


def test_feature_split_shares_weights(hub_dir):
    model = build_transfer_model("hub:" + hub_dir, 3, image_size=IMAGE_SIZE, head_units=(4,), dropout=0.0)
    features, head = cut_at_features(model)
    batch = images()
    pooled = features.predict(batch, verbose=0)
    assert pooled.shape == (4, FEATURES)
    np.testing.assert_allclose(head.predict(pooled, verbose=0), model.predict(batch, verbose=0), rtol=1e-5, atol=1e-6)
    assert head.get_layer("predictions") is model.get_layer("predictions")


def test_hub_weights_choices(hub_dir, tmp_path, monkeypatch):
    from keras_cnn.models.bases import build_base
    from keras_cnn.models.weights import resolve_weights

    with pytest.raises(UserError, match="carries its own weights"):
        build_transfer_model("hub:" + hub_dir, 2, image_size=IMAGE_SIZE, weights="none")

    # A weights file saved from a (fine-tuned) hub base loads into a fresh one.
    tuned = build_base("hub:" + hub_dir, IMAGE_SIZE, weights="imagenet")
    kernel = tuned.get_layer("hub_module").weights[0]
    kernel.assign(kernel.numpy() + 1.0)
    path = tmp_path / "hub_base.weights.h5"
    tuned.save_weights(path)
    fresh = build_base("hub:" + hub_dir, IMAGE_SIZE, weights=str(path))
    np.testing.assert_array_equal(fresh.get_layer("hub_module").weights[0].numpy(), kernel.numpy())

    # An unreachable URL fails when the weights are resolved, i.e. before any work.
    import tensorflow_hub

    monkeypatch.setattr(tensorflow_hub, "resolve", offline_resolve)
    with pytest.raises(UserError, match="cannot download TF Hub module"):
        resolve_weights(get_base_spec("hub:https://tfhub.dev/example/missing/1"), "imagenet")
