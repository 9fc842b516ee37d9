"""The config each training command builds from its flags, with the API mocked (no training)."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner

from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, FineTuneConfig, ModelConfig, RunConfig, TrainingConfig

SUMMARY = {"run": "R", "architecture": "lenet", "base": "vgg16", "stage": "head", "epochs": 1, "seconds": 1.0,
           "test_accuracy": 0.5, "trainable_params": 1, "total_params": 2}


@pytest.fixture
def calls(monkeypatch):
    """Replace the three training functions; record what the CLI passes them."""
    from keras_cnn.train import fit, two_stage

    recorded = []

    def recorder(name):
        def fake(*args, **kwargs):
            recorded.append((name, args, kwargs))
            return SUMMARY
        return fake

    monkeypatch.setattr(fit, "train_scratch", recorder("train_scratch"))
    monkeypatch.setattr(two_stage, "train_head", recorder("train_head"))
    monkeypatch.setattr(two_stage, "fine_tune_run", recorder("fine_tune_run"))
    return recorded


def invoke(*args):
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert result.exit_code == 0, result.output[-2000:]
    return result


def test_train_builds_its_config_from_every_flag(calls, tmp_path):
    split, images = tmp_path / "split.csv", tmp_path / "images"
    split.write_text("objectId,value,type\n")
    images.mkdir()
    invoke("train", "cifar10_net", "--split", split, "--images", images, "--epochs", 3, "--batch-size", 8,
           "--learning-rate", 0.01, "--seed", 7, "--optimizer", "sgd", "--augment", "--api", "sequential",
           "--validation-split", 0.3, "--class-weight", "balanced", "--resize-mode", "pad", "--cache", "none",
           "--skip-bad-images", "--mixed-precision", "off", "--xla", "off", "--strategy", "default",
           "--out", tmp_path / "run", "--overwrite", "--accept-input-changes")
    [(name, args, kwargs)] = calls
    assert name == "train_scratch"
    assert args == (RunConfig(
        command="train",
        model=ModelConfig(kind="scratch", name="cifar10_net", api="sequential"),
        data=DataConfig(split=str(split), images=str(images), resize_mode="pad", augment=True,
                        augment_engine="layers", cache=False, skip_bad_images=True, validation_split=0.3),
        training=TrainingConfig(epochs=3, batch_size=8, learning_rate=0.01, optimizer="sgd", seed=7,
                                class_weight="balanced", mixed_precision="off", xla="off", strategy="default"),
    ), str(tmp_path / "run"))
    assert kwargs == {"overwrite": True, "accept_input_changes": True}


def test_train_defaults_leave_the_recipe_to_the_api_and_name_the_run_folder(calls, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    invoke("train", "lenet", "--dataset", "mnist")
    [(_, (config, out_dir), kwargs)] = calls
    assert config == RunConfig(command="train", model=ModelConfig(kind="scratch", name="lenet"),
                               data=DataConfig(dataset="mnist"), training=TrainingConfig())
    # Named here, not by the API: Ctrl-C then prints the command that resumes this very folder.
    assert re.fullmatch(r"runs/lenet-\d{8}-\d{6}", out_dir), out_dir
    assert kwargs == {"overwrite": False, "accept_input_changes": False}


def test_transfer_builds_its_config_from_every_flag(calls, tmp_path):
    split, images = tmp_path / "split.csv", tmp_path / "images"
    split.write_text("objectId,value,type\n")
    images.mkdir()
    invoke("transfer", "--base", "vgg16", "--split", split, "--images", images, "--out", tmp_path / "run",
           "--image-size", 64, "--weights", "none", "--head-units", 32, "--head-units", 16, "--dropout", 0.5,
           "--binary", "--epochs", 2, "--batch-size", 4, "--learning-rate", 0.002, "--seed", 3,
           "--optimizer", "rmsprop", "--augment", "--no-cache-features", "--class-weight", "balanced",
           "--api", "sequential", "--resize-mode", "crop", "--cache", "/tmp/c", "--skip-bad-images",
           "--mixed-precision", "on", "--xla", "on", "--strategy", "mirrored", "--accept-input-changes")
    [(name, args, kwargs)] = calls
    assert name == "train_head"
    assert args == (RunConfig(
        command="transfer",
        model=ModelConfig(kind="transfer", name="vgg16", api="sequential", weights="none", head_units=[32, 16],
                          dropout=0.5, binary=True),
        # The augmentation recipe is the API's default (resolve_transfer_config), not the CLI's.
        data=DataConfig(split=str(split), images=str(images), image_size=(64, 64), channels=3, resize_mode="crop",
                        augment=True, augmentation=None, cache="/tmp/c", skip_bad_images=True),
        training=TrainingConfig(epochs=2, batch_size=4, learning_rate=0.002, optimizer="rmsprop", seed=3,
                                class_weight="balanced", cache_features=False, mixed_precision="on", xla="on",
                                strategy="mirrored"),
    ), str(tmp_path / "run"))
    assert kwargs == {"overwrite": False, "accept_input_changes": True}


def test_finetune_builds_a_fine_tune_config(calls, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    invoke("finetune", "--run", run, "--unfreeze-from", "block5_conv1", "--train-bn", "--epochs", 2,
           "--learning-rate", 1e-4, "--batch-size", 8, "--optimizer", "sgd", "--out", tmp_path / "copy",
           "--xla", "off", "--overwrite", "--accept-input-changes")
    [(name, args, kwargs)] = calls
    assert name == "fine_tune_run"
    assert args == (FineTuneConfig(unfreeze_from="block5_conv1", train_bn=True,
                                   training=TrainingConfig(epochs=2, learning_rate=1e-4, optimizer="sgd", batch_size=8,
                                                           mixed_precision=None, xla="off", strategy=None)),
                    str(run), str(tmp_path / "copy"))
    assert kwargs == {"overwrite": True, "trust_hub": False, "accept_input_changes": True}
    calls.clear()
    invoke("finetune", "--run", run)
    [(_, (config, _, out_dir), kwargs)] = calls
    assert config == FineTuneConfig() and out_dir is None and kwargs == {"overwrite": False, "trust_hub": False,
                                                                         "accept_input_changes": False}


@pytest.mark.parametrize("command", [["train", "lenet", "--dataset", "mnist"],
                                     ["finetune", "--run", "."]])
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_non_finite_learning_rates_are_usage_errors(calls, command, value):
    result = CliRunner().invoke(cli, [*command, "--learning-rate", value])
    assert result.exit_code == 2 and "finite" in result.stderr and not calls


def test_images_without_split_with_layout_and_allowed_labels(calls, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    invoke("train", "lenet", "--images", images, "--layout", "split-folders", "--allow-label", "None",
           "--allow-label", "nan")
    invoke("transfer", "--base", "vgg16", "--images", images, "--layout", "folders")
    [(_, (scratch, _out), _), (_, (transfer, _out2), _)] = calls
    assert scratch.data == DataConfig(images=str(images), layout="split-folders", allow_labels=["None", "nan"])
    assert transfer.data.split is None and transfer.data.layout == "folders" and transfer.data.allow_labels == []
