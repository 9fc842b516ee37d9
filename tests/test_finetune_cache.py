"""Fine-tuning on cached frozen layers (``kcnn finetune --cache-frozen``, the default without augmentation).

The frozen layers below the unfreeze point run once per image; only the layers above train,
on the cached boundary tensors.  The results must equal fine-tuning the whole model on the
images, and the saved model must be the whole model.
"""

from __future__ import annotations

import csv
import json
from types import SimpleNamespace

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from keras_cnn.cli import cli
from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig


def history(run):
    with open(run / "history.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["stage"] == "finetune"]


def informative_weights(path, sample_data_dir) -> str:
    """EfficientNet-B0 weights (32 px) whose BatchNorm statistics come from the sample images.

    With random weights alone the model predicts the same for every image, and a test
    comparing two ways of training could not tell them apart.
    """
    from keras_cnn.data.images import load_image
    from keras_cnn.models.bases import build_base
    from keras_cnn.models.weights import set_batch_norm_statistics

    keras.utils.set_random_seed(5)
    base = build_base("efficientnet_b0", 32, weights="none")
    files = sorted(sample_data_dir.glob("*.jpg"))[:40]
    images = np.stack([np.asarray(load_image(file.read_bytes(), (32, 32), 3)) for file in files]).astype("float32")
    set_batch_norm_statistics(base, images)
    base.save_weights(path)
    return str(path)


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, sample_data_dir, sample_split):
    """An EfficientNet-B0 stage-1 run at 32 px on 23 sample images, without a validation part.

    Without validation both stages keep the model of lowest training loss, and the first
    fine-tune epoch is always saved, so the two fine-tunes below both write a model.  The base
    has informative BatchNorm statistics (its answers depend on the image).
    """
    from keras_cnn.train.two_stage import train_head

    root = tmp_path_factory.mktemp("finetune_cache")
    with open(sample_split, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["type"] != "validation"][:30]
    split = root / "split.csv"
    with open(split, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["objectId", "value", "type"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({key: row[key] for key in ("objectId", "value", "type")} for row in rows)
    config = RunConfig(command="transfer", model=ModelConfig(kind="transfer", name="efficientnet_b0", dropout=0.3),
                       data=DataConfig(split=str(split), images=str(sample_data_dir), image_size=(32, 32)),
                       training=TrainingConfig(epochs=1, batch_size=8, learning_rate=1e-3, seed=7))
    config.model.weights = informative_weights(root / "base.weights.h5", sample_data_dir)
    train_head(config, root / "stage1")
    return root / "stage1"


def test_cached_and_uncached_fine_tuning_give_the_same_weights(stage1_run, tmp_path):
    """Same seed, same batches in the same order: the same weights after 6 steps.

    SGD (with momentum) keeps the comparison about the data: Adam divides each update by
    the gradient's own running size, so for weights whose gradient is almost zero it turns
    float rounding (the bottom computed in other batches) into updates of about 1e-5.
    """
    from keras_cnn.config import FineTuneConfig, TrainingConfig
    from keras_cnn.train.two_stage import fine_tune_run

    cached = fine_tune_run(FineTuneConfig(unfreeze_from="block7a", training=TrainingConfig(
        epochs=2, learning_rate=0.005, batch_size=8, optimizer="sgd")), stage1_run, tmp_path / "cached")
    result = CliRunner().invoke(cli, ["finetune", "--run", str(stage1_run), "--unfreeze-from", "block7a",
                                      "--epochs", "2", "--learning-rate", "0.005", "--batch-size", "8",
                                      "--optimizer", "sgd",
                                      "--out", str(tmp_path / "uncached"), "--no-cache-frozen", "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    uncached = json.loads(result.stdout)
    assert cached["trainable_params"] == uncached["trainable_params"]

    stages = {name: json.loads((tmp_path / name / "config.json").read_text())["extra"]["stages"]["finetune"]
              for name in ("cached", "uncached")}
    assert stages["cached"]["cache_frozen"] is True and stages["uncached"]["cache_frozen"] is False
    assert stages["cached"]["frozen_cache"] == {"used": True, "boundary_layer": "block6d_add",
                                                "boundary_shape": [1, 1, 192], "bytes_per_image": 768}
    assert "frozen_cache" not in stages["uncached"]
    # 23 train images in batches of 8: 3 steps an epoch, shuffled alike.
    losses = [[float(row["loss"]) for row in history(tmp_path / name)] for name in ("cached", "uncached")]
    assert len(losses[0]) == 2
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)

    models = [keras.saving.load_model(tmp_path / name / "model.keras") for name in ("cached", "uncached")]
    assert [layer.name for layer in models[0].layers] == [layer.name for layer in models[1].layers]
    assert models[0].count_params() == models[1].count_params()   # the whole model, not its top
    before = keras.saving.load_model(stage1_run / "model.keras").get_layer("predictions").kernel.numpy()
    assert not np.allclose(models[0].get_layer("predictions").kernel.numpy(), before)   # it did train
    for cached_weight, uncached_weight in zip(models[0].weights, models[1].weights):
        np.testing.assert_allclose(np.asarray(cached_weight), np.asarray(uncached_weight), atol=1e-5,
                                   err_msg=cached_weight.path)
    assert not (tmp_path / "cached" / "features").exists() and not (tmp_path / "cached" / "backup").exists()


def test_cache_frozen_defaults_to_on_without_augmentation():
    from keras_cnn.config import FineTuneConfig
    from keras_cnn.errors import UserError
    from keras_cnn.train.two_stage import resolve_cache_frozen

    plain, augmented = (RunConfig(command="transfer", data=DataConfig(augment=augment)) for augment in (False, True))
    assert resolve_cache_frozen(plain, FineTuneConfig(), "auto") is True
    assert resolve_cache_frozen(plain, FineTuneConfig(cache_frozen=False), "auto") is False
    assert resolve_cache_frozen(augmented, FineTuneConfig(), "auto") is False
    assert resolve_cache_frozen(plain, FineTuneConfig(), "multiworker") is False
    for config, strategy in ((augmented, "auto"), (plain, "multiworker")):
        with pytest.raises(UserError, match="--no-cache-frozen"):
            resolve_cache_frozen(config, FineTuneConfig(cache_frozen=True), strategy)


def test_a_boundary_that_is_not_one_tensor_falls_back_with_one_line(tmp_path, capsys):
    from keras_cnn.models.transfer import build_transfer_model, unfreeze_from
    from keras_cnn.runs import RunDirectory
    from keras_cnn.train.two_stage import top_on_cached_boundary

    model = build_transfer_model("vgg16", 3, image_size=32, weights=None)
    unfreeze_from(model, "all")
    run = RunDirectory(tmp_path / "run").create()
    run.write_config({"extra": {"stages": {"finetune": {"cache_frozen": True}}}})
    data = SimpleNamespace(train="train images", validation="validation images")
    context = SimpleNamespace(model=model, data=data, training=TrainingConfig(batch_size=4), run=run,
                              spec=SimpleNamespace(name="finetune"))
    capsys.readouterr()
    inputs = top_on_cached_boundary(context)
    assert (inputs.model, inputs.train, inputs.validation) == (model, "train images", "validation images")
    assert capsys.readouterr().err.strip().splitlines() == [
        "not caching the frozen layers (the whole model trains on images): nothing trainable in the base vgg16 "
        "is frozen"]
    recorded = run.read_config()["extra"]["stages"]["finetune"]
    assert recorded == {"cache_frozen": True, "frozen_cache": {
        "used": False, "reason": "nothing trainable in the base vgg16 is frozen"}}


@pytest.mark.slow
def test_a_cached_stage_saves_the_whole_model_once_and_survives_a_kill(tmp_path, sample_data_dir, sample_split,
                                                                       monkeypatch):
    """Cheap cached epochs: only the trained part's weights are checkpointed per epoch; the whole
    model is assembled at the end; a kill before that resumes and still ends with the best epoch."""
    from conftest import write_hub_module
    from keras_cnn.data.pipeline import make_dataset
    from keras_cnn.train import stage
    from keras_cnn.train.callbacks import NanGuard, StageCheckpoint
    from keras_cnn.train.two_stage import train_head

    run = tmp_path / "run"
    seen = []

    class Spy(NanGuard):   # runs after the checkpoint: what is on disk once an epoch is committed
        def on_epoch_end(self, epoch, logs=None):
            seen.append((run / "model.keras").exists())
            if epoch == 2 and hard_kill:
                raise SystemExit("killed")

    hub = write_hub_module(tmp_path / "hub")
    config = RunConfig(command="transfer", model=ModelConfig(kind="transfer", name=f"hub:{hub}"),
                       data=DataConfig(split=str(sample_split), images=str(sample_data_dir), image_size=(32, 32)),
                       training=TrainingConfig(epochs=5, learning_rate=0.05, batch_size=16, cache_features=True))
    monkeypatch.setattr(stage, "NanGuard", Spy)
    # A hard kill gets no chance to assemble the whole model.
    monkeypatch.setattr(StageCheckpoint, "assemble", lambda self: None)
    hard_kill = True
    with pytest.raises(SystemExit):
        train_head(config, run)
    assert seen == [False, False, False] and not (run / "model.keras").exists()
    monkeypatch.undo()
    monkeypatch.setattr(stage, "NanGuard", Spy)
    hard_kill = False
    train_head(config, run)
    assert seen[3:] == [False, False] and (run / "model.keras").exists()

    rows = list(csv.DictReader(open(run / "history.csv", newline="")))
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4", "5"]
    model = keras.saving.load_model(run / "model.keras")
    loss, count = 0.0, 0
    for images, labels in make_dataset(sample_split, sample_data_dir, "validation", (32, 32), 16, shuffle=False):
        loss += float(keras.losses.sparse_categorical_crossentropy(labels, model(images)).numpy().sum())
        count += len(labels)
    assert loss / count == pytest.approx(min(float(row["val_loss"]) for row in rows), rel=1e-4, abs=1e-5)
    assert not (run / "backup").exists() and not (run / "features").exists()
