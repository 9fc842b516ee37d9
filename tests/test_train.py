"""`kcnn train`: a complete run directory, learning above chance, resume after a kill."""

import csv
import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import write_cifar10_archive
from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
from keras_cnn.errors import RunFailure
from keras_cnn.train.callbacks import NanGuard


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_lenet_on_mnist_file_learns_and_leaves_a_complete_run(tmp_path, mnist_npz):
    run = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "keras_cnn", "train", "lenet", "--dataset", "mnist", "--dataset-path",
         str(mnist_npz), "--epochs", "3", "--batch-size", "32", "--out", str(run), "--json"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads(result.stdout)  # exactly one JSON object on stdout
    assert summary["test_accuracy"] > 0.5  # ten classes: chance is 0.1
    config = json.loads((run / "config.json").read_text())
    assert config["training"]["optimizer"] == "adam" and config["training"]["learning_rate"] == 1e-3
    assert config["training"]["epochs"] == 3 and config["training"]["seed"] == 1234
    assert config["data"]["validation_split"] == 0.2
    assert config["versions"]["tensorflow"].startswith("2.21")
    assert (run / "labels.txt").read_text().split() == [str(digit) for digit in range(10)]
    rows = read_rows(run / "history.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "seconds", "stage"} <= set(rows[0])
    assert all(float(row["seconds"]) > 0 for row in rows)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["test"]["per_class_accuracy"]) == {str(digit) for digit in range(10)}
    assert abs(metrics["test"]["accuracy"] - summary["test_accuracy"]) < 1e-9
    assert (run / "model.keras").stat().st_size > 0 and (run / "training.png").stat().st_size > 0
    assert any((run / "logs").rglob("*tfevents*"))
    assert not list(run.glob(".*tmp*")), "temporary files left behind"
    assert "Epoch 1/3" in result.stderr  # Keras's progress goes to stderr


class KillAfterSecondEpoch(NanGuard):
    """Stands in for a killed process: the run dies after epoch 2 has been backed up."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


def test_a_killed_run_resumes_from_its_last_epoch(tmp_path, mnist_npz, monkeypatch):
    from keras_cnn.train import fit, stage

    config = RunConfig(command="train", model=ModelConfig(name="lenet"),
                       data=DataConfig(dataset="mnist", dataset_path=str(mnist_npz)),
                       training=TrainingConfig(epochs=3, batch_size=64))
    run = tmp_path / "run"
    monkeypatch.setattr(stage, "NanGuard", KillAfterSecondEpoch)
    with pytest.raises(KeyboardInterrupt):
        fit.train_scratch(config, run)
    before = read_rows(run / "history.csv")
    assert [row["epoch"] for row in before] == ["1", "2"]
    assert (run / "backup" / "train").exists() and (run / "model.keras").exists()

    monkeypatch.setattr(stage, "NanGuard", NanGuard)
    fit.train_scratch(config, run)
    after = read_rows(run / "history.csv")
    assert [row["epoch"] for row in after] == ["1", "2", "3"]
    # Epochs 1 and 2 were not trained again: their rows are the very same.
    assert after[:2] == before
    assert not (run / "backup" / "train").exists()


def test_nan_loss_stops_with_a_clear_error():
    guard = NanGuard()

    class FakeModel:
        stop_training = False

    guard.set_model(FakeModel())
    guard.on_epoch_begin(0)
    guard.on_train_batch_end(3, {"loss": 0.5})
    with pytest.raises(RunFailure, match="loss became nan at epoch 1, batch 5"):
        guard.on_train_batch_end(4, {"loss": float("nan")})


@pytest.mark.parametrize("engine", ["layers", "legacy"])
def test_cifar10_deep_net_with_reference_augmentation(tmp_path, engine):
    archive = write_cifar10_archive(tmp_path, per_batch=16)
    run = tmp_path / f"run-{engine}"
    result = CliRunner().invoke(cli, ["train", "cifar10_deep_net", "--dataset", "cifar10", "--dataset-path",
                                      str(archive), "--augment", "--augment-engine", engine, "--epochs", "1",
                                      "--out", str(run), "--json"])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["augment"] and config["data"]["augment_engine"] == engine
    assert config["training"]["optimizer"] == "rmsprop"
    assert len(read_rows(run / "history.csv")) == 1


def test_reference_recipe_uses_15_epochs_when_augmenting():
    from keras_cnn.train.fit import resolve_scratch_config

    config = RunConfig(command="train", model=ModelConfig(name="cifar10_deep_net"),
                       data=DataConfig(dataset="cifar10", augment=True))
    resolved = resolve_scratch_config(config)
    assert resolved.training.epochs == 15 and resolved.training.batch_size == 128
    assert resolve_scratch_config(RunConfig(command="train", model=ModelConfig(name="lenet"))).training.epochs == 12


def test_run_progress_reports_time_left(capsys):
    from keras_cnn.train.callbacks import RunProgress, format_seconds

    progress = RunProgress("train", epochs=3)
    for epoch in range(3):
        progress.on_epoch_begin(epoch)
        progress.on_epoch_end(epoch)
    early = capsys.readouterr().err.splitlines()  # the last line waits for the end of training
    assert len(early) == 2 and early[0].startswith("[train] epoch 1/3 took 0s; about ")
    progress.on_train_end()
    assert capsys.readouterr().err.splitlines() == ["[train] epoch 3/3 took 0s"]
    assert (format_seconds(75), format_seconds(3700)) == ("1m15s", "1h01m")


def test_history_restarting_a_stage_drops_its_old_rows_and_later_stages(tmp_path):
    from keras_cnn.train.callbacks import HistoryRecorder, write_history

    path = tmp_path / "history.csv"
    write_history(path, [{"stage": "head", "epoch": 1, "seconds": 1.0, "loss": 0.9},
                         {"stage": "head", "epoch": 2, "seconds": 1.0, "loss": 0.8},
                         {"stage": "finetune", "epoch": 1, "seconds": 2.0, "loss": 0.7}])
    recorder = HistoryRecorder(path, "head")
    recorder.on_train_begin()
    recorder.on_epoch_begin(0)
    recorder.on_epoch_end(0, {"loss": 0.5})
    assert [(row["stage"], row["epoch"]) for row in read_rows(path)] == [("head", "1")]

    resumed = HistoryRecorder(path, "finetune")
    write_history(path, [*read_rows(path), {"stage": "finetune", "epoch": 1, "seconds": 2.0, "loss": 0.4},
                         {"stage": "finetune", "epoch": 2, "seconds": 2.0, "loss": 0.3}])
    resumed.on_train_begin()
    resumed.on_epoch_begin(1)  # resumed after epoch 1: epoch 2 is redone
    resumed.on_epoch_end(1, {"loss": 0.2})
    rows = read_rows(path)
    assert [(row["stage"], row["epoch"], row["loss"]) for row in rows] == [
        ("head", "1", "0.5"), ("finetune", "1", "0.4"), ("finetune", "2", "0.2")]
