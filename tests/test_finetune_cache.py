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


@pytest.fixture(scope="module")
def stage1_run(tmp_path_factory, sample_data_dir, sample_split):
    """An EfficientNet-B0 stage-1 run at 32 px on 23 sample images, without a validation part.

    Without validation both stages keep the model of lowest training loss, and the first
    fine-tune epoch is always saved, so the two fine-tunes below both write a model.
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
    config.model.weights = "none"
    train_head(config, root / "stage1")
    return root / "stage1"


@pytest.mark.slow
def test_cached_and_uncached_fine_tuning_give_the_same_weights(stage1_run, tmp_path):
    """Same seed, same batches in the same order: the same weights after 6 steps.

    SGD (with momentum) keeps the comparison about the data: Adam divides each update by
    the gradient's own running size, so for weights whose gradient is almost zero it turns
    float rounding (the bottom computed in other batches) into updates of about 1e-5.
    """
    from keras_cnn.train.two_stage import fine_tune_run

    cached = fine_tune_run(stage1_run, unfreeze_from="block7a", epochs=2, learning_rate=0.05, batch_size=8,
                           optimizer="sgd", out_dir=tmp_path / "cached")
    result = CliRunner().invoke(cli, ["finetune", "--run", str(stage1_run), "--unfreeze-from", "block7a",
                                      "--epochs", "2", "--learning-rate", "0.05", "--batch-size", "8",
                                      "--optimizer", "sgd",
                                      "--out", str(tmp_path / "uncached"), "--no-cache-frozen", "--json"])
    assert result.exit_code == 0, result.output[-3000:]
    uncached = json.loads(result.stdout)
    assert cached["trainable_params"] == uncached["trainable_params"]

    stages = {name: json.loads((tmp_path / name / "config.json").read_text())["extra"]["stages"]["finetune"]
              for name in ("cached", "uncached")}
    assert stages["cached"]["cache_frozen"] is True and stages["uncached"]["cache_frozen"] is False
    assert stages["cached"]["frozen_cache"] == {"boundary_layer": "block6d_add", "boundary_shape": [1, 1, 192],
                                                "bytes_per_image": 768}
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


def test_a_boundary_that_is_not_one_tensor_falls_back_with_one_line(capsys):
    from keras_cnn.models.transfer import build_transfer_model, unfreeze_from
    from keras_cnn.train.two_stage import _frozen_split

    model = build_transfer_model("vgg16", 3, image_size=32, weights=None)
    config = RunConfig(command="transfer", data=DataConfig(augment=False))
    session = SimpleNamespace(multiworker=False)
    unfreeze_from(model, "block5_conv1")
    assert _frozen_split(model, config, session, None).boundary_layer == "block4_pool"
    assert _frozen_split(model, config, session, False) is None
    unfreeze_from(model, "all")
    capsys.readouterr()
    assert _frozen_split(model, config, session, None) is None
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["Not caching the frozen layers (the whole model trains on images): nothing trainable in "
                     "the base vgg16 is frozen"]
    augmented = RunConfig(command="transfer", data=DataConfig(augment=True))
    assert _frozen_split(model, augmented, session, None) is None
    from keras_cnn.errors import UserError

    with pytest.raises(UserError, match="--no-cache-frozen"):
        _frozen_split(model, augmented, session, True)
