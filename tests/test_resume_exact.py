"""A resumed run is the same run: killed after an epoch and resumed (after epoch 1, then again after
epoch 2), a stage ends with the history (timing aside), the weights and the calibration of the
uninterrupted run with the same seed — scratch training (augmented, RandAugment and MixUp, with
dropout), stage 1 on cached features and fine-tuning on images, each through the command line; in
the slow set also stage 1 on images, fine-tuning on cached inputs, a multi-label run, and processes
killed hard with the legacy augmentation and the multi-worker loop."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import write_hub_module
from keras_cnn.cli import cli
from keras_cnn.train.callbacks import NanGuard

EPOCHS = 3


def kill_after(epochs: int):
    class KilledAfter(NanGuard):   # the runner's last own callback: the epoch has been committed
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == epochs:
                raise KeyboardInterrupt

    return KilledAfter


def invoke(arguments: list[str]) -> None:
    result = CliRunner().invoke(cli, [*arguments, "--json"])
    assert result.exit_code == 0, result.output[-3000:]


def killed_and_resumed(arguments: list[str], monkeypatch, kills: tuple[int, ...]) -> None:
    """Run ``arguments`` killed after each epoch count of ``kills`` in turn, then to the end."""
    from keras_cnn.train import stage

    for epochs in kills:
        monkeypatch.setattr(stage, "NanGuard", kill_after(epochs))
        result = CliRunner().invoke(cli, arguments)
        assert result.exit_code == 130, result.output[-3000:]
    monkeypatch.setattr(stage, "NanGuard", NanGuard)
    invoke(arguments)


def history(run, stage_name: str) -> list[dict[str, str]]:
    with open(run / "history.csv", newline="") as handle:
        return [{key: value for key, value in row.items() if key != "seconds"}
                for row in csv.DictReader(handle) if row["stage"] == stage_name]


def assert_same_run(uninterrupted, resumed, stage_name: str) -> None:
    from keras_cnn.models.loading import load_model

    rows = history(uninterrupted, stage_name)
    assert [row["epoch"] for row in rows] == [str(epoch) for epoch in range(1, EPOCHS + 1)]
    assert history(resumed, stage_name) == rows
    config = json.loads((uninterrupted / "config.json").read_text())
    trusted = config["model"]["name"] if config["model"]["name"].startswith("hub:") else None
    first, second = (load_model(run / "model.keras", trust_hub=trusted) for run in (uninterrupted, resumed))
    assert len(first.weights) == len(second.weights)
    for expected, received in zip(first.weights, second.weights):
        np.testing.assert_array_equal(np.asarray(received), np.asarray(expected), err_msg=expected.path)
    assert not (resumed / "backup").exists()
    # Fitted on the best model when the stage ends: the same model, the same temperature and thresholds.
    for name in ("calibration.json", "thresholds.json"):
        assert (uninterrupted / name).exists() == (resumed / name).exists(), name
        if (uninterrupted / name).exists():
            assert json.loads((resumed / name).read_text()) == json.loads((uninterrupted / name).read_text()), name


@pytest.fixture(scope="module")
def hub_module(tmp_path_factory) -> str:
    return write_hub_module(tmp_path_factory.mktemp("resume_hub") / "hub")


@pytest.fixture(scope="module")
def small_split(sample_split, tmp_path_factory):
    """A third of the sample split (train, validation and test rows of every label): cheap epochs."""
    with open(sample_split, newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [row for label in sorted({row["value"] for row in rows}) for row in
            [row for row in rows if row["value"] == label][::3]]
    path = tmp_path_factory.mktemp("resume_split") / "split.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept)
    return path


def test_a_resumed_scratch_run_is_the_uninterrupted_run(tmp_path, sample_data_dir, small_split, monkeypatch):
    """Shuffled every epoch, augmented, RandAugment-ed and mixed per batch, with Dropout in the model:
    the draws a resumed epoch makes are those of its epoch number (with --seed 0, a seed TensorFlow
    treats apart)."""
    arguments = ["train", "cifar10_net", "--images", str(sample_data_dir), "--split", str(small_split),
                 "--epochs", str(EPOCHS), "--batch-size", "16", "--augment", "--randaugment", "1,5", "--mixup", "0.2",
                 "--seed", "0"]
    invoke([*arguments, "--out", str(tmp_path / "uninterrupted")])
    killed_and_resumed([*arguments, "--out", str(tmp_path / "resumed")], monkeypatch, kills=(1, 2))
    assert_same_run(tmp_path / "uninterrupted", tmp_path / "resumed", "train")


def test_resumed_transfer_stages_are_the_uninterrupted_ones(tmp_path, sample_data_dir, small_split, hub_module,
                                                           monkeypatch):
    """Stage 1 on cached features (shuffled like the images, a Dropout head), then fine-tuning on
    the images (the whole model, uncached); the largest seed."""
    head = ["transfer", "--base", f"hub:{hub_module}", "--images", str(sample_data_dir), "--split",
            str(small_split), "--image-size", "32", "--epochs", str(EPOCHS), "--batch-size", "16",
            "--learning-rate", "0.01", "--dropout", "0.5", "--seed", str(2**32 - 1)]
    invoke([*head, "--out", str(tmp_path / "head")])
    killed_and_resumed([*head, "--out", str(tmp_path / "head-resumed")], monkeypatch, kills=(1, 2))
    assert json.loads((tmp_path / "head" / "config.json").read_text())["training"]["cache_features"] is True
    assert_same_run(tmp_path / "head", tmp_path / "head-resumed", "head")

    finetune = ["finetune", "--run", str(tmp_path / "head"), "--trust-hub", "--unfreeze-from", "all",
                "--no-cache-frozen", "--epochs", str(EPOCHS), "--batch-size", "16", "--learning-rate", "0.01"]
    invoke([*finetune, "--out", str(tmp_path / "tuned")])
    killed_and_resumed([*finetune, "--out", str(tmp_path / "tuned-resumed")], monkeypatch, kills=(1, 2))
    assert_same_run(tmp_path / "tuned", tmp_path / "tuned-resumed", "finetune")


@pytest.mark.slow
def test_resumed_stages_on_the_other_paths_are_the_uninterrupted_ones(tmp_path, sample_data_dir, small_split,
                                                                     hub_module, monkeypatch):
    """Stage 1 on the images (no cached features), then fine-tuning on the cached output of the
    frozen layers with discriminative rates."""
    head = ["transfer", "--base", f"hub:{hub_module}", "--images", str(sample_data_dir), "--split",
            str(small_split), "--image-size", "32", "--epochs", str(EPOCHS), "--batch-size", "16",
            "--learning-rate", "0.01", "--no-cache-features", "--dropout", "0.5", "--seed", "7"]
    invoke([*head, "--out", str(tmp_path / "head")])
    killed_and_resumed([*head, "--out", str(tmp_path / "head-resumed")], monkeypatch, kills=(1, 2))
    assert json.loads((tmp_path / "head" / "config.json").read_text())["training"]["cache_features"] is False
    assert_same_run(tmp_path / "head", tmp_path / "head-resumed", "head")

    finetune = ["finetune", "--run", str(tmp_path / "head"), "--trust-hub", "--unfreeze-from", "all",
                "--cache-frozen", "--lr-mult", "3", "--epochs", str(EPOCHS), "--batch-size", "16",
                "--learning-rate", "0.01"]
    invoke([*finetune, "--out", str(tmp_path / "tuned")])
    killed_and_resumed([*finetune, "--out", str(tmp_path / "tuned-resumed")], monkeypatch, kills=(1, 2))
    assert_same_run(tmp_path / "tuned", tmp_path / "tuned-resumed", "finetune")


@pytest.mark.slow
def test_a_resumed_multi_label_run_is_the_uninterrupted_run(tmp_path, monkeypatch):
    """One sigmoid per label, augmented and mixed; its thresholds are chosen when the stage ends."""
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    generator = np.random.default_rng(5)
    rows = ["objectId,tags"]
    for index in range(90):
        tags = [label for label in ("a", "b", "c") if generator.random() < 0.45]
        pixels = generator.integers(0, 70, (28, 28), dtype=np.uint8)
        for position, label in enumerate(("a", "b", "c")):
            if label in tags:
                pixels[3 + 9 * position:5 + 9 * position] = 255
        Image.fromarray(pixels).save(images / f"{index:03d}.png")
        rows.append(f"{index:03d}.png,{'|'.join(tags)}")
    (images / "tags.csv").write_text("\n".join(rows) + "\n")
    invoke(["split", str(images / "tags.csv"), "--images", str(images), "--multi-label", "--label-delimiter", "|",
            "--label-column", "tags", "-o", str(tmp_path / "split.csv")])
    arguments = ["train", "lenet", "--images", str(images), "--split", str(tmp_path / "split.csv"), "--epochs",
                 str(EPOCHS), "--batch-size", "16", "--augment", "--mixup", "0.3"]
    invoke([*arguments, "--out", str(tmp_path / "uninterrupted")])
    killed_and_resumed([*arguments, "--out", str(tmp_path / "resumed")], monkeypatch, kills=(1, 2))
    assert (tmp_path / "uninterrupted" / "thresholds.json").exists()
    assert_same_run(tmp_path / "uninterrupted", tmp_path / "resumed", "train")


KILL_AFTER_ENVIRONMENT = "KCNN_TEST_KILL_AFTER_EPOCH"
# A training process that dies (os._exit, no clean-up at all) once the epoch named by the environment is committed.
HARD_KILL_SCRIPT = f"""
import os, sys
from keras_cnn.train import stage
from keras_cnn.train.callbacks import NanGuard

class KilledAfter(NanGuard):
    def on_epoch_end(self, epoch, logs=None):
        if str(epoch + 1) == os.environ.get("{KILL_AFTER_ENVIRONMENT}"):
            os._exit(9)

stage.NanGuard = KilledAfter
from keras_cnn.cli import main
sys.argv = ["kcnn", *sys.argv[1:]]
main()
"""


def run_process(arguments: list[str], kill_after: int | None = None, environment: dict | None = None) -> int:
    environment = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(environment or {})}
    environment.pop(KILL_AFTER_ENVIRONMENT, None)
    if kill_after is not None:
        environment[KILL_AFTER_ENVIRONMENT] = str(kill_after)
    completed = subprocess.run([sys.executable, "-c", HARD_KILL_SCRIPT, *arguments], capture_output=True, text=True,
                               timeout=600, env=environment)
    if kill_after is None:
        assert completed.returncode == 0, completed.stderr[-3000:]
    else:
        assert completed.returncode == 9, completed.stderr[-3000:]
    return completed.returncode


def single_worker_cluster() -> dict[str, str]:
    with socket.socket() as handle:
        handle.bind(("127.0.0.1", 0))
        port = handle.getsockname()[1]
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}"]},
                                    "task": {"type": "worker", "index": 0}})}


@pytest.mark.slow
@pytest.mark.parametrize("engine_options", [
    ["--augment-engine", "legacy"],      # ImageDataGenerator.flow: numpy's random state, positioned per epoch
    ["--strategy", "multiworker"],       # kcnn's own loop, whose passes over the data do not start with epochs
])
def test_hard_killed_processes_resume_into_the_uninterrupted_run(tmp_path, mnist_npz, engine_options):
    """Each run in a process of its own, the kills with os._exit: nothing carries over but the run folder."""
    arguments = ["train", "lenet", "--dataset", "mnist", "--dataset-path", str(mnist_npz), "--augment",
                 "--epochs", str(EPOCHS), "--batch-size", "64", *engine_options]
    multiworker = "multiworker" in engine_options
    # A new cluster address each time: a process that ended keeps its port a while.
    for name, kills in (("uninterrupted", ()), ("resumed", (1, 2))):
        for kill in (*kills, None):
            run_process([*arguments, "--out", str(tmp_path / name)], kill,
                        single_worker_cluster() if multiworker else None)
    assert_same_run(tmp_path / "uninterrupted", tmp_path / "resumed", "train")


def test_the_shuffle_order_is_a_function_of_seed_and_epoch_also_for_seed_0():
    """TensorFlow's seed check cannot compare a traced seed once the global seed is 0 (``--seed 0``)."""
    import keras
    import tensorflow as tf

    from keras_cnn.data.randomness import shuffle_per_epoch

    def two_epochs(seed: int) -> list[list[int]]:
        keras.utils.set_random_seed(seed)
        dataset = shuffle_per_epoch(tf.data.Dataset.range(50), 50, seed)
        return [[int(value) for value in dataset] for _ in range(2)]

    for seed in (0, 7):
        first, second = two_epochs(seed)
        assert sorted(first) == list(range(50)) and first != second   # each epoch a new order
        assert two_epochs(seed) == [first, second]                      # the same orders again
