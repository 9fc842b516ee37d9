"""The recipe options through real runs: each one reaches the run, is recorded, and survives a resume."""

import csv
import json
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import learnable_digit_images, train_tiny_hub_head
from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from keras_cnn.train.callbacks import NanGuard


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def history(run):
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def compiled_optimizer(model_path):
    """The optimizer config saved inside a ``.keras`` file (what the run really trained with)."""
    with zipfile.ZipFile(model_path) as archive:
        return json.loads(archive.read("config.json"))["compile_config"]["optimizer"]


def test_schedule_and_weight_averaging_reach_the_run_and_its_saved_model(tmp_path, mnist_npz):
    run = tmp_path / "run"
    common = ["train", "lenet5_bn", "--dataset", "mnist", "--dataset-path", mnist_npz, "--epochs", 3,
              "--batch-size", 48, "--out", run, "--json"]
    # A decay this close to 1 keeps the average at the weights after the first step.
    result = invoke(*common, "--schedule", "cosine", "--warmup-epochs", 0.5, "--ema", 0.999999)
    assert result.exit_code == 0, result.output[-3000:]
    training = json.loads((run / "config.json").read_text())["training"]
    assert (training["schedule"], training["warmup_epochs"], training["ema"]) == ("cosine", 0.5, 0.999999)

    optimizer = compiled_optimizer(run / "model.keras")["config"]
    steps = int(np.ceil(480 / 48))   # 600 images, the last 20 % validate
    assert optimizer["use_ema"] and optimizer["ema_momentum"] == pytest.approx(0.999999)
    curve = optimizer["learning_rate"]["config"]
    assert (curve["kind"], curve["total_steps"], curve["warmup_steps"]) == ("cosine", 3 * steps, steps // 2)

    # The raw weights learned (training loss falls) but validation, the checkpoint and the test
    # saw the average: still close to the untrained network.
    rows = history(run)
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    assert min(float(row["val_loss"]) for row in rows) > 1.5
    assert json.loads(result.stdout)["test_loss"] > 1.5

    refused = invoke(*common, "--schedule", "constant", "--ema", 0.999999)
    assert refused.exit_code == 2 and "schedule" in refused.output


class KillAfterSecondEpoch(NanGuard):
    """Stands in for a killed process: the run dies once epoch 2 is committed."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_early_stopping_keeps_the_best_epoch_and_its_patience_across_a_kill(tmp_path, monkeypatch):
    from keras_cnn.train import fit, stage

    # The validation part (the last 20 %) is labelled one class off: the better the network
    # learns, the worse its validation loss gets after the first epoch.
    images, labels = learnable_digit_images(500, seed=5)
    labels[400:] = (labels[400:] + 1) % 10
    np.savez(tmp_path / "shifted.npz", x_train=images, y_train=labels, x_test=images[:50], y_test=labels[:50])
    config = RunConfig(command="train", model=ModelConfig(name="lenet5_bn"),
                       data=DataConfig(dataset="mnist", dataset_path=str(tmp_path / "shifted.npz")),
                       training=TrainingConfig(epochs=8, batch_size=50, early_stopping=2))
    run = tmp_path / "run"
    monkeypatch.setattr(stage, "NanGuard", KillAfterSecondEpoch)
    with pytest.raises(KeyboardInterrupt):
        fit.train_scratch(config, run)
    monkeypatch.setattr(stage, "NanGuard", NanGuard)
    fit.train_scratch(config, run)

    rows = history(run)
    losses = [float(row["val_loss"]) for row in rows]
    best = int(np.argmin(losses))
    # Stopped 2 epochs after the best one, counting the epochs trained before the kill.
    assert len(rows) == best + 3 < 8
    metrics = json.loads((run / "metrics.json").read_text())["stages"]["train"]
    assert metrics["early_stopping"] == {"stopped_after_epoch": best + 3, "best_epoch": best + 1, "patience": 2}


def test_finetune_lr_mult_gives_the_base_a_smaller_rate(tmp_path, sample_data_dir, sample_split):
    run = train_tiny_hub_head(tmp_path, sample_split, sample_data_dir)
    result = invoke("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 1, "--learning-rate", 1e-3,
                    "--lr-mult", 4, "--schedule", "onecycle", "--trust-hub", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    record = json.loads((run / "config.json").read_text())["extra"]["stages"]["finetune"]
    assert (record["lr_mult"], record["schedule"]) == (4.0, "onecycle")
    blocks = json.loads((run / "metrics.json").read_text())["stages"]["finetune"]["learning_rate_factors"]
    assert [block["factor"] for block in blocks] == [0.25, 1.0]   # the hub module is one block, then the head
    optimizer = compiled_optimizer(run / "stages" / "finetune.keras"
                                   if (run / "stages" / "finetune.keras").exists() else run / "model.keras")
    assert optimizer["class_name"].endswith("WithLayerRates")
    factors = optimizer["config"]["rate_factors"]
    assert sorted(set(factors.values())) == [0.25, 1.0]
