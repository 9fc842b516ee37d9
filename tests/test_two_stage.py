"""Transfer learning end to end: stage 1 (cached or not), stage 2, reference trainable counts."""

import csv
import json

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_hub_module
from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig


def invoke(*args):
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    return result


def invoke_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def hub_module(tmp_path_factory):
    return write_hub_module(tmp_path_factory.mktemp("hub") / "tiny")


def stages(run):
    with open(run / "history.csv", newline="") as handle:
        return [row["stage"] for row in csv.DictReader(handle)]


@pytest.mark.parametrize("cache_features", [True, False])
def test_stage1_learns_the_sample_data_with_and_without_cached_features(tmp_path, sample_data_dir, sample_split,
                                                                         hub_module, cache_features):
    from keras_cnn.train.two_stage import train_head

    config = RunConfig(command="transfer",
                       model=ModelConfig(kind="transfer", name=f"hub:{hub_module}"),
                       data=DataConfig(split=str(sample_split), images=str(sample_data_dir), image_size=(32, 32)),
                       training=TrainingConfig(epochs=40, learning_rate=0.05, batch_size=16,
                                               cache_features=cache_features))
    summary = train_head(config, tmp_path / "run")
    assert summary["test_accuracy"] > 0.6  # three classes: chance is 1/3
    assert summary["trainable_params"] == 6 * 3 + 3  # only the head trains
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["stages"]["head"]["parameters"]["trainable_params"] == 21
    assert not (tmp_path / "run" / "features").exists()


def test_cached_features_equal_a_fresh_forward_pass_of_the_frozen_base(sample_data_dir, sample_split):
    import keras

    from keras_cnn.data import make_dataset
    from keras_cnn.models.bases import preprocessing_layer
    from keras_cnn.models.transfer import build_transfer_model, get_base_layer, cut_at_features
    from keras_cnn.train.features import extract_features

    model = build_transfer_model("vgg16", 3, image_size=32, weights="none")
    feature_extractor, _ = cut_at_features(model)
    dataset = make_dataset(sample_split, sample_data_dir, "validation", (32, 32), 8, shuffle=False)
    count = sum(int(labels.shape[0]) for _, labels in dataset)
    cached, cached_labels = extract_features(feature_extractor, dataset, count)
    images = np.concatenate([images.numpy() for images, _ in dataset]).astype("float32")  # a layer takes floats
    labels = np.concatenate([labels.numpy() for _, labels in dataset])
    base = get_base_layer(model)
    fresh = keras.ops.mean(base(preprocessing_layer("vgg16")(images), training=False), axis=(1, 2))
    np.testing.assert_allclose(cached, np.asarray(fresh), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cached_labels, labels)
    assert np.std(cached, axis=0).mean() > 0  # features differ between images


@pytest.mark.slow
def test_inception_v3_mixed8_reference_counts_through_the_cli(tmp_path, sample_data_dir, sample_split):
    run = tmp_path / "inception"
    head = invoke_json("transfer", "--base", "inception_v3", "--split", sample_split, "--images", sample_data_dir,
                       "--out", run, "--image-size", 75, "--weights", "none", "--head-units", 1024,
                       "--dropout", 0, "--epochs", 1, "--optimizer", "rmsprop")
    classes = 3
    assert head["trainable_params"] == 2_098_176 + 1_025 * classes
    assert head["total_params"] == 21_802_784 + 2_098_176 + 1_025 * classes

    frozen_bn = invoke_json("finetune", "--run", run, "--unfreeze-from", "mixed8", "--epochs", 1,
                            "--optimizer", "sgd", "--learning-rate", 1e-4, "--out", tmp_path / "bn-frozen")
    assert frozen_bn["trainable_params"] == head["trainable_params"] + 11_108_352
    with_bn = invoke_json("finetune", "--run", run, "--unfreeze-from", "mixed8", "--train-bn", "--epochs", 1,
                          "--out", tmp_path / "bn-trained")
    assert with_bn["trainable_params"] == head["trainable_params"] + 11_114_880
    # --out leaves the stage-1 run as it was and gives the copy both stages.
    assert set(stages(run)) == {"head"}
    assert stages(tmp_path / "bn-frozen") == ["head", "finetune"]
    config = json.loads((tmp_path / "bn-frozen" / "config.json").read_text())
    assert config["extra"]["stages"]["finetune"]["unfreeze_from"] == "mixed8"
    assert config["extra"]["stages"]["finetune"]["parameters"]["trainable_params"] == frozen_bn["trainable_params"]


def test_efficientnet_transfer_then_finetune_from_block7a(tmp_path, sample_data_dir, sample_split):
    run = tmp_path / "effnet"
    head = invoke_json("transfer", "--base", "efficientnet_b0", "--split", sample_split, "--images",
                       sample_data_dir, "--out", run, "--image-size", 64, "--weights", "none", "--epochs", 2)
    assert head["total_params"] == 4_049_571 + 1_281 * 3 and head["trainable_params"] == 1_281 * 3
    tuned = invoke_json("finetune", "--run", run, "--unfreeze-from", "block7a", "--epochs", 1)
    assert tuned["trainable_params"] > head["trainable_params"]
    assert stages(run) == ["head", "head", "finetune"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["stages"]) == {"head", "finetune"} and "per_class_accuracy" in metrics["test"]


def test_hub_base_fine_tunes_all_its_variables(tmp_path, sample_data_dir, sample_split, hub_module):
    run = tmp_path / "hub"
    head = invoke_json("transfer", "--base", f"hub:{hub_module}", "--split", sample_split, "--images",
                       sample_data_dir, "--out", run, "--image-size", 32, "--epochs", 2, "--no-cache-features",
                       "--augment")
    tuned = invoke_json("finetune", "--run", run, "--unfreeze-from", "all", "--train-bn", "--epochs", 1,
                        "--learning-rate", 1e-2, "--trust-hub")
    # conv kernel 3*3*3*6 + bias 6 + BN gamma/beta 6+6 join the head's 21.
    assert tuned["trainable_params"] == head["trainable_params"] + 162 + 6 + 12


def test_unknown_layer_is_refused_with_nearby_names(tmp_path, sample_data_dir, sample_split, hub_module):
    run = tmp_path / "vgg"
    invoke_json("transfer", "--base", "vgg16", "--split", sample_split, "--images", sample_data_dir,
                "--out", run, "--image-size", 32, "--weights", "none", "--epochs", 1)
    result = invoke("finetune", "--run", run, "--unfreeze-from", "block5_conv9")
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("kcnn: error")]
    assert len(errors) == 1 and "block5_conv3" in errors[0] and "Traceback" not in result.stderr


def test_binary_head_has_one_sigmoid_unit(tmp_path):
    from keras_cnn.data.collection import split_to_file
    from keras_cnn.data.sample import write_sample_data

    write_sample_data(tmp_path / "data", classes=2, per_class=30, size=32)
    split_to_file(str(tmp_path / "data" / "label.csv"), str(tmp_path / "split.csv"))
    summary = invoke_json("transfer", "--base", "vgg16", "--split", tmp_path / "split.csv", "--images",
                          tmp_path / "data", "--out", tmp_path / "run", "--image-size", 32, "--weights", "none",
                          "--binary", "--epochs", 1)
    assert summary["trainable_params"] == 512 + 1


def test_offline_imagenet_fails_before_any_work(tmp_path, sample_data_dir, sample_split, monkeypatch):
    from keras_cnn.models import weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "empty-keras-home"))
    monkeypatch.setattr(weights, "can_download", lambda url, timeout=3: False)
    result = invoke("transfer", "--base", "efficientnet_b0", "--split", sample_split, "--images", sample_data_dir,
                    "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert "--weights none" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_summary_of_transfer_bases_needs_no_download(hub_module):
    result = invoke("summary", f"hub:{hub_module}")
    assert result.exit_code == 0, result.output
    assert "hub_base" in result.output and "predictions" in result.output
    result = invoke("summary", "vgg16", "--num-classes", "10")
    assert result.exit_code == 0, result.output
    assert "14,719,818" in result.output  # 14,714,688 + 513 * 10


def test_killed_stage1_resumes_from_its_last_epoch(tmp_path, sample_data_dir, sample_split, hub_module, monkeypatch):
    from keras_cnn.train import stage
    from keras_cnn.train.callbacks import NanGuard
    from keras_cnn.train.two_stage import train_head

    class KillAfterSecondEpoch(NanGuard):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    config = RunConfig(command="transfer", model=ModelConfig(kind="transfer", name=f"hub:{hub_module}"),
                       data=DataConfig(split=str(sample_split), images=str(sample_data_dir), image_size=(32, 32)),
                       training=TrainingConfig(epochs=3, cache_features=False))
    run = tmp_path / "run"
    monkeypatch.setattr(stage, "NanGuard", KillAfterSecondEpoch)
    with pytest.raises(KeyboardInterrupt):
        train_head(config, run)
    with open(run / "history.csv", newline="") as handle:
        before = list(csv.DictReader(handle))
    monkeypatch.setattr(stage, "NanGuard", NanGuard)
    train_head(config, run)
    with open(run / "history.csv", newline="") as handle:
        after = list(csv.DictReader(handle))
    assert [row["epoch"] for row in after] == ["1", "2", "3"] and after[:2] == before
    assert json.loads((run / "metrics.json").read_text())["stages"]["head"]["epochs"] == 3


def test_fine_tune_hands_stage_1_model_and_data_to_stage_2_and_overwrite_restarts_stage_2(
        tmp_path, sample_data_dir, sample_split, hub_module, monkeypatch):
    from keras_cnn.config import FineTuneConfig
    from keras_cnn.models import loading
    from keras_cnn.train import stage_data as data_module
    from keras_cnn.train import two_stage

    counts = {"load_model": 0, "prepare_folder_data": 0}

    def counted(module, name):
        original = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[name] += 1
            return original(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted(loading, "load_model")
    counted(data_module, "prepare_folder_data")
    config = RunConfig(command="transfer", model=ModelConfig(kind="transfer", name=f"hub:{hub_module}"),
                       data=DataConfig(split=str(sample_split), images=str(sample_data_dir), image_size=(32, 32)),
                       training=TrainingConfig(epochs=1, batch_size=16))
    run = tmp_path / "run"
    summary = two_stage.fine_tune(config, run, FineTuneConfig(unfreeze_from="all", training=TrainingConfig(epochs=1)))
    # One decoding of the images and no reload: stage 2 started from stage 1's model in memory.
    assert counts == {"load_model": 0, "prepare_folder_data": 1}
    assert summary["stage"] == "finetune" and summary["head"]["stage"] == "head"
    assert stages(run) == ["head", "finetune"] and (run / "stages" / "head.keras").exists()

    tuned = two_stage.fine_tune_run(FineTuneConfig(unfreeze_from="all", training=TrainingConfig(epochs=1, learning_rate=1e-3)), run,
                                    overwrite=True, trust_hub=True)
    assert tuned["stage"] == "finetune" and stages(run) == ["head", "finetune"]
    state = json.loads((run / "state.json").read_text())
    assert state["stages"]["finetune"]["options"]["training"]["learning_rate"] == 1e-3
    config_json = json.loads((run / "config.json").read_text())
    assert config_json["extra"]["stages"]["finetune"]["learning_rate"] == 1e-3
