"""Frozen means frozen: a transfer model's frozen layers run in inference mode on every path.

Keras 3 replaces a recorded ``base(x, training=False)`` by the outer call's ``training=True``
inside ``fit``, so without kcnn's :class:`~keras_cnn.models.frozen.TransferBase` the nine
stochastic-depth layers of EfficientNet-B0 fire inside its frozen part.  The models here get
BatchNorm statistics from images (``set_batch_norm_statistics``), so their predictions depend
on the input and a computation that differs shows.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from keras_cnn.models.applications import APPLICATION_BASES
from keras_cnn.models.boundary import NoSingleBoundary, cut_at_frozen_boundary
from keras_cnn.models.frozen import TransferBase, acts_only_in_training, layer_training, with_transfer_base
from keras_cnn.models.loading import load_model
from keras_cnn.models.transfer import build_transfer_model, get_base_layer, cut_at_features, unfreeze_from
from keras_cnn.models.weights import set_batch_norm_statistics

SIZE = 32


def pictures(count: int = 8, seed: int = 0) -> np.ndarray:
    """Smooth random pictures (0..255): blobs of colour, closer to photos than white noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 4, 4, 3)).astype("float32")
    return np.asarray(keras.ops.image.resize(coarse, (SIZE, SIZE), interpolation="bilinear"))


def informative_model(base: str = "efficientnet_b0", classes: int = 3, dropout: float = 0.0) -> keras.Model:
    """A transfer model whose predictions depend on the image (BatchNorm statistics from pictures)."""
    keras.utils.set_random_seed(0)
    model = build_transfer_model(base, classes, image_size=SIZE, weights=None, dropout=dropout, seed=0)
    set_batch_norm_statistics(model, pictures(32, seed=99))
    return model


@pytest.fixture(scope="module")
def efficientnet():
    return informative_model()


def test_the_rule_for_each_kind_of_layer():
    frozen, dropout = keras.layers.Dropout(0.5), keras.layers.Dropout(0.5)
    frozen.trainable = False
    batch_norm = keras.layers.BatchNormalization()
    assert [layer_training(frozen, True, on) for on in (False, True)] == [False, False]
    assert [layer_training(dropout, True, on) for on in (False, True)] == [False, True]
    assert [layer_training(batch_norm, True, on) for on in (False, True)] == [True, True]
    assert [layer_training(dropout, value, True) for value in (False, None)] == [False, None]
    assert acts_only_in_training(dropout) and acts_only_in_training(keras.layers.GaussianNoise(0.1))
    assert not acts_only_in_training(keras.layers.Dropout(0.0))
    assert not acts_only_in_training(keras.layers.Dense(3)) and not acts_only_in_training(batch_norm)


def test_predictions_depend_on_the_image(efficientnet):
    probabilities = np.asarray(efficientnet(pictures(), training=False))
    assert probabilities.std(axis=0).min() > 0.01   # not the same answer for every picture


def test_a_frozen_base_ignores_training_true(efficientnet):
    """Stage 1: the whole base is frozen, so training=True (what fit passes) changes nothing."""
    assert isinstance(get_base_layer(efficientnet), TransferBase)
    images = pictures()
    np.testing.assert_allclose(np.asarray(efficientnet(images, training=True)),
                               np.asarray(efficientnet(images, training=False)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("base, boundary", [("efficientnet_b0", "block7a"), ("efficientnet_v2_b0", "block6a")])
def test_training_the_whole_model_equals_training_the_top_on_the_bottom(base, boundary):
    """What makes the frozen-layer cache exact: model(x, training=True) == top(bottom(x))."""
    model = informative_model(base)
    unfreeze_from(model, boundary)
    base_layer = get_base_layer(model)
    frozen_noise = [layer.name for layer in base_layer.layers if acts_only_in_training(layer) and not layer.trainable]
    assert frozen_noise   # stochastic depth below the boundary: what this test is about
    cut = cut_at_frozen_boundary(model)
    images = pictures()
    np.testing.assert_allclose(np.asarray(model(images, training=True)),
                               np.asarray(cut.top(cut.bottom(images), training=True)), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("base", sorted(APPLICATION_BASES))
def test_every_base_trains_its_frozen_layers_in_inference_mode(base):
    """Unfrozen from its default point, BatchNorm frozen and --no-base-dropout: training=True changes
    nothing, and where the frozen part can be cut off, top(bottom(x)) is the whole model."""
    spec = APPLICATION_BASES[base]
    keras.utils.set_random_seed(0)
    size = max(SIZE, spec.min_image_size)
    model = build_transfer_model(base, 3, image_size=size, weights=None, dropout=0.0, seed=0)
    images = np.asarray(keras.ops.image.resize(pictures(8), (size, size)))
    set_batch_norm_statistics(model, images)
    unfreeze_from(model, spec.default_unfreeze)
    whole = np.asarray(model(images, training=True))
    np.testing.assert_allclose(whole, np.asarray(model(images, training=False)), rtol=1e-4, atol=1e-5)
    try:
        cut = cut_at_frozen_boundary(model)
    except NoSingleBoundary:
        return
    np.testing.assert_allclose(np.asarray(cut.top(cut.bottom(images), training=True)), whole,
                               rtol=1e-4, atol=1e-5)


def test_base_dropout_acts_only_in_the_unfrozen_layers():
    model = informative_model()
    images = pictures()
    unfreeze_from(model, "block6a", base_dropout=True)   # block6b..6d_drop above the boundary
    assert get_base_layer(model).base_dropout is True
    keras.utils.set_random_seed(1)
    noisy = np.asarray(model(images, training=True))
    assert np.abs(noisy - np.asarray(model(images, training=False))).max() > 1e-4
    unfreeze_from(model, "block6a", base_dropout=False)
    np.testing.assert_allclose(np.asarray(model(images, training=True)),
                               np.asarray(model(images, training=False)), rtol=1e-5, atol=1e-6)


def tiny_transfer_model(dropout: float = 0.0, api: str = "functional") -> keras.Model:
    """A small kcnn-shaped transfer model (image -> TransferBase -> head) with dropout on both sides of
    its ``upper`` block, BatchNorm statistics from pictures and the base frozen, as stage 1 leaves it."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    hidden = keras.layers.Conv2D(8, 3, strides=2, name="lower_conv")(keras.layers.Rescaling(1 / 255)(inputs))
    hidden = keras.layers.BatchNormalization(name="lower_bn")(hidden)
    hidden = keras.layers.Dropout(0.5, name="lower_drop")(hidden)
    hidden = keras.layers.Conv2D(8, 3, strides=2, name="upper_conv")(hidden)
    hidden = keras.layers.Dropout(0.5, name="upper_drop")(hidden)
    base = TransferBase(inputs, hidden, name="tiny_base")
    base.trainable = False
    head = [keras.layers.GlobalAveragePooling2D(name="head_pool"), keras.layers.Dropout(dropout, name="head_dropout"),
            keras.layers.Dense(3, activation="softmax", name="predictions")]
    if api == "sequential":
        model = keras.Sequential([keras.Input((SIZE, SIZE, 3), name="image"), base, *head], name="tiny_classifier")
    else:
        image = keras.Input((SIZE, SIZE, 3), name="image")
        outputs = base(image)
        for layer in head:
            outputs = layer(outputs)
        model = keras.Model(image, outputs, name="tiny_classifier")
    set_batch_norm_statistics(model, pictures(32, seed=99))
    return model


def recorded_training(monkeypatch) -> dict[str, set]:
    """Spy on every Dropout call: layer name -> the training values it was called with."""
    seen: dict[str, set] = {}
    original = keras.layers.Dropout.call

    def call(self, inputs, training=False):
        seen.setdefault(self.name, set()).add(training if isinstance(training, (bool, type(None))) else "tensor")
        return original(self, inputs, training=training)

    monkeypatch.setattr(keras.layers.Dropout, "call", call)
    return seen


@pytest.mark.parametrize("base_dropout", [False, True])
def test_no_frozen_layer_trains_in_fit_evaluate_predict_or_export(monkeypatch, tmp_path, base_dropout):
    model = tiny_transfer_model(dropout=0.3)
    unfreeze_from(model, "upper_conv", base_dropout=base_dropout)
    seen = recorded_training(monkeypatch)
    images, labels = pictures(8), np.arange(8) % 3
    model.compile("sgd", "sparse_categorical_crossentropy")
    model.fit(images, labels, epochs=1, batch_size=4, verbose=0)
    model.evaluate(images, labels, verbose=0)
    model.predict(images, verbose=0)
    model.export(str(tmp_path / "export"), verbose=False)
    assert seen["lower_drop"] == {False}
    assert seen["upper_drop"] == ({False, True} if base_dropout else {False})
    assert True in seen["head_dropout"]   # the head's own dropout is the user's --dropout


def test_the_multiworker_training_step_keeps_frozen_layers_in_inference_mode(monkeypatch):
    """kcnn's own loop for MultiWorkerMirroredStrategy calls the model itself (train/distribute.py)."""
    import tensorflow as tf

    from keras_cnn.train.distribute import fit_multiworker

    model = tiny_transfer_model(dropout=0.3)
    unfreeze_from(model, "upper_conv", base_dropout=True)
    model.compile("sgd", "sparse_categorical_crossentropy")
    seen = recorded_training(monkeypatch)
    dataset = tf.data.Dataset.from_tensor_slices((pictures(8), np.arange(8) % 3)).batch(4)
    fit_multiworker(lambda: model, lambda input_context: dataset, epochs=1, steps_per_epoch=2,
                    strategy=tf.distribute.get_strategy(), verbose=0)
    assert seen["lower_drop"] == {False} and True in seen["upper_drop"] and True in seen["head_dropout"]


def trainable_flags(base) -> list[bool]:
    return [layer.trainable for layer in base.layers if not isinstance(layer, keras.layers.InputLayer)]


def saved_config(path) -> str:
    import zipfile

    with zipfile.ZipFile(path) as archive:
        return archive.read("config.json").decode()


def test_the_base_class_and_its_choice_survive_save_and_safe_load(tmp_path):
    model = tiny_transfer_model()
    unfreeze_from(model, "upper_conv", base_dropout=True)
    path = tmp_path / "model.keras"
    model.save(path)
    assert '"kcnn>TransferBase"' in saved_config(path)
    reloaded = keras.saving.load_model(path, safe_mode=True)
    base = get_base_layer(reloaded)
    assert isinstance(base, TransferBase) and base.base_dropout is True
    assert trainable_flags(base) == trainable_flags(get_base_layer(model))
    images = pictures()
    np.testing.assert_allclose(np.asarray(reloaded(images)), np.asarray(model(images)), rtol=1e-5, atol=1e-6)


def old_style_model(model: keras.Model) -> keras.Model:
    """The same layers assembled as kcnn did before: a plain functional base called with training=False."""
    base = get_base_layer(model)
    plain = keras.Model(base.input, base.output, name=base.name)
    inputs = keras.Input(model.input_shape[1:], name="image")
    outputs = inputs
    for layer in model.layers[1:]:
        outputs = plain(outputs, training=False) if layer is base else layer(outputs)
    return keras.Model(inputs, outputs, name=model.name)


def test_a_model_saved_by_an_older_kcnn_gets_the_base_class_on_load(tmp_path):
    old = old_style_model(tiny_transfer_model())
    unfreeze_from(old, "upper_conv")
    images = pictures()
    with pytest.raises(NoSingleBoundary, match=r"would run in training mode .*\(lower_drop\)"):
        cut_at_frozen_boundary(old)
    # What that plain base did while fitting: its frozen dropout fired.
    assert np.abs(np.asarray(old(images, training=True)) - np.asarray(old(images, training=False))).max() > 1e-4
    path = tmp_path / "old.keras"
    old.save(path)
    assert "TransferBase" not in saved_config(path)
    loaded = load_model(path)
    assert isinstance(get_base_layer(loaded), TransferBase)
    np.testing.assert_allclose(np.asarray(loaded(images, training=True)),
                               np.asarray(old(images, training=False)), rtol=1e-5, atol=1e-6)
    cut = cut_at_frozen_boundary(loaded)   # now exact, so it may be cached
    np.testing.assert_allclose(np.asarray(cut.top(cut.bottom(images), training=True)),
                               np.asarray(loaded(images, training=True)), rtol=1e-5, atol=1e-6)
    assert with_transfer_base(loaded) is loaded


def test_a_sequential_transfer_model_keeps_its_frozen_layers_in_inference_mode():
    model = tiny_transfer_model(api="sequential")
    unfreeze_from(model, "upper_conv")
    images = pictures()
    np.testing.assert_allclose(np.asarray(model(images, training=True)),
                               np.asarray(model(images, training=False)), rtol=1e-5, atol=1e-6)
    cut = cut_at_frozen_boundary(model)
    np.testing.assert_allclose(np.asarray(cut.top(cut.bottom(images), training=True)),
                               np.asarray(model(images, training=True)), rtol=1e-5, atol=1e-6)


def test_stage_1_on_cached_features_gives_the_same_head_as_on_images():
    """One SGD step on the head: through the whole model, and on the frozen base's features."""
    images, labels = pictures(8), np.arange(8) % 3
    start = tiny_transfer_model().get_layer("predictions").kernel.numpy()
    heads = []
    for cached in (False, True):
        model = tiny_transfer_model()
        extractor, head = cut_at_features(model)
        trained, inputs = (head, extractor.predict(images, verbose=0)) if cached else (model, images)
        trained.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy")
        trained.fit(inputs, labels, epochs=1, batch_size=8, shuffle=False, verbose=0)
        heads.append(model.get_layer("predictions").kernel.numpy())
    assert np.abs(heads[0] - start).max() > 1e-3
    np.testing.assert_allclose(heads[0], heads[1], rtol=1e-5, atol=1e-6)


def test_finetune_records_its_base_dropout_choice(tmp_path, sample_data_dir, sample_split):
    """--base-dropout reaches the stage record (config.json), the run state and the saved model."""
    from click.testing import CliRunner
    from conftest import train_tiny_hub_head

    from keras_cnn.cli import cli

    run = train_tiny_hub_head(tmp_path, sample_split, sample_data_dir)
    finetune = ["finetune", "--run", str(run), "--unfreeze-from", "all", "--epochs", "1"]
    result = CliRunner().invoke(cli, [*finetune, "--base-dropout"])
    assert result.exit_code == 0, result.output[-2000:]
    stage = json.loads((run / "config.json").read_text())["extra"]["stages"]["finetune"]
    assert stage["base_dropout"] is True
    state = json.loads((run / "state.json").read_text())["stages"]["finetune"]["options"]["finetune"]
    assert state["base_dropout"] is True
    assert get_base_layer(load_model(run / "model.keras")).base_dropout is True
    result = CliRunner().invoke(cli, [*finetune, "--no-base-dropout"])
    assert result.exit_code == 2 and "finetune.base_dropout (run: true, now: false)" in result.output


def test_resuming_from_a_checkpoint_of_the_older_layout_is_one_line(tmp_path):
    """A stage an older kcnn started (plain base) cannot load its epoch checkpoint into a TransferBase."""
    from keras_cnn.errors import UserError
    from keras_cnn.train.callbacks import StageCheckpoint

    new = tiny_transfer_model()
    backup = tmp_path / "backup"
    (backup / "epoch-0001").mkdir(parents=True)
    old_style_model(new).save_weights(backup / "epoch-0001" / StageCheckpoint.STATE)
    (backup / StageCheckpoint.LATEST).write_text(json.dumps({"epoch": 1, "directory": "epoch-0001"}))
    new.compile("sgd", "sparse_categorical_crossentropy")
    checkpoint = StageCheckpoint(backup, tmp_path / "model.keras")
    checkpoint.set_model(new)
    with pytest.raises(UserError, match="does not fit this model .*--overwrite starts the stage over"):
        checkpoint.on_train_begin()
