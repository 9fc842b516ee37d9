"""``--base keras_hub:PRESET_OR_DIR``: a local preset saved from a small random ResNet backbone
through stage 1, fine-tuning, export and predict; offline handles fail before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from keras_cnn.cli import cli

keras_hub = pytest.importorskip("keras_hub")  # the optional extra; installed by .[test]

SCALE = [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)]
OFFSET = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def invoke_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    """A keras-hub preset folder: a two-stage ResNet backbone (random weights) and its image converter."""
    folder = tmp_path_factory.mktemp("keras_hub") / "tiny_resnet"
    folder.mkdir()
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(None, None, 3))
    backbone.save_to_preset(str(folder))
    keras_hub.layers.ResNetImageConverter(image_size=(40, 40), scale=SCALE, offset=OFFSET).save_to_preset(str(folder))
    return folder


def test_base_is_the_converter_then_the_backbone_layers(preset):
    from keras_cnn.models.bases import build_base, get_base_spec
    from keras_cnn.models.parameters import parameter_counts

    spec = get_base_spec(f"keras_hub:{preset}")
    assert spec.default_image_size == 40 and spec.kind == "keras_hub"
    base = build_base(spec, 32)
    backbone = keras_hub.models.Backbone.from_preset(str(preset))
    assert [layer.name for layer in base.layers][1] == "image_converter"
    assert not any(isinstance(layer, keras_hub.models.Backbone) for layer in base.layers)
    assert parameter_counts(base)["total_params"] == backbone.count_params()
    pixels = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    expected = backbone(pixels * np.array(SCALE, "float32") + np.array(OFFSET, "float32"))
    np.testing.assert_allclose(np.asarray(base(pixels)), np.asarray(expected), atol=1e-5, rtol=0)


def test_a_frozen_preset_base_runs_in_inference_mode(preset):
    """Its backbone's layers sit in kcnn's TransferBase, which keeps frozen layers in inference mode."""
    from keras_cnn.models.frozen import TransferBase
    from keras_cnn.models.transfer import build_transfer_model, get_base_layer, unfreeze_from
    from keras_cnn.models.weights import set_batch_norm_statistics

    model = build_transfer_model(f"keras_hub:{preset}", 3, image_size=32, dropout=0.0, seed=0)
    pixels, others = np.random.default_rng(0).uniform(0, 255, size=(2, 4, 32, 32, 3)).astype("float32")
    set_batch_norm_statistics(model, others)
    assert isinstance(get_base_layer(model), TransferBase)
    unfreeze_from(model, "stack1", train_bn=True)
    # Trainable BatchNorm (--train-bn) learns from the batch; the frozen ones keep their statistics.
    assert np.abs(np.asarray(model(pixels, training=True)) - np.asarray(model(pixels, training=False))).max() > 1e-4
    unfreeze_from(model, "stack1")
    np.testing.assert_allclose(np.asarray(model(pixels, training=True)), np.asarray(model(pixels, training=False)),
                               rtol=1e-5, atol=1e-6)


def test_grad_cam_reaches_the_feature_map_inside_a_preset_backbone(preset):
    """The backbone's layers are opened like any functional base: the heat map comes from its last stage."""
    from keras_cnn.explain import explain_images
    from keras_cnn.models.opened import open_model
    from keras_cnn.models.transfer import build_transfer_model

    model = build_transfer_model(f"keras_hub:{preset}", 3, image_size=32, dropout=0.0, seed=0)
    opened = open_model(model)
    pixels = np.random.default_rng(1).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    assert opened.feature_layer.startswith("stack1") and opened.feature_shape[:2] == (4, 4), opened.no_feature_map
    explained = explain_images(opened, pixels)
    np.testing.assert_allclose(np.asarray(explained["probabilities"]), np.asarray(model(pixels)), atol=1e-6)
    assert np.asarray(explained["heatmap"]).shape == (2, 32, 32)


PLAIN_TENSORFLOW = """
import json, sys
import tensorflow as tf
model = tf.saved_model.load(sys.argv[1])
serve = model.signatures["serving_default"]
outputs = serve(tf.constant([open(path, "rb").read() for path in sys.argv[2:]]))
print(json.dumps({"probabilities": outputs["probabilities"].numpy().tolist(),
                  "modules": sorted({name.split(".")[0] for name in sys.modules} & {"keras_hub", "keras_cnn"})}))
"""


@pytest.mark.slow  # about two minutes on two cores
def test_preset_trains_fine_tunes_exports_and_predicts_without_keras_hub(preset, tmp_path, sample_data_dir,
                                                                         sample_split):
    run, export = tmp_path / "run", tmp_path / "export"
    head = invoke_json("transfer", "--base", f"keras_hub:{preset}", "--split", sample_split, "--images",
                       sample_data_dir, "--out", run, "--image-size", 32, "--epochs", 1, "--batch-size", 32)
    assert head["trainable_params"] == 32 * 3 + 3
    tuned = invoke_json("finetune", "--run", run, "--unfreeze-from", "stack1", "--epochs", 1)
    assert head["trainable_params"] < tuned["trainable_params"] < tuned["total_params"]
    exported = invoke_json("export", "--run", run, "--out", export)
    assert exported["max_abs_diff"]["saved_model"] < 1e-5

    files = sorted(path for path in sample_data_dir.iterdir() if path.suffix != ".csv")[:3]
    predictions = invoke_json("predict", "--model", exported["path"], *files)
    completed = subprocess.run([sys.executable, "-c", PLAIN_TENSORFLOW, exported["path"], *map(str, files)],
                               capture_output=True, text=True, timeout=300,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    plain = json.loads(completed.stdout.strip().splitlines()[-1])
    assert plain["modules"] == []  # neither kcnn nor keras-hub is needed to serve the export

    import tensorflow as tf

    from keras_cnn.data.images import load_image
    from keras_cnn.models.loading import load_model

    pixels = np.stack([load_image(tf.constant(path.read_bytes()), (32, 32), 3).numpy() for path in files])
    expected = load_model(run / "model.keras").predict(pixels.astype("float32"), verbose=0)
    np.testing.assert_allclose([row["probabilities"] for row in predictions], expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(plain["probabilities"], expected, atol=1e-5, rtol=0)


def test_offline_handle_fails_before_any_work_with_a_local_folder_hint(tmp_path, sample_data_dir, sample_split,
                                                                       monkeypatch):
    from keras_cnn.models import keras_hub as keras_hub_bases

    monkeypatch.setattr(keras_hub_bases, "can_download", lambda url, timeout=3.0: False)
    result = invoke("transfer", "--base", "keras_hub:resnet_18_imagenet", "--split", sample_split, "--images",
                    sample_data_dir, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "keras_hub:/path/to/preset_folder" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()
    missing = invoke("transfer", "--base", f"keras_hub:{tmp_path / 'nowhere'}", "--split", sample_split,
                     "--images", sample_data_dir, "--out", tmp_path / "run")
    assert missing.exit_code == 2 and "does not exist" in missing.output
