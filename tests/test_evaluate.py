"""`kcnn evaluate` on a handmade run (the metrics themselves: test_metrics.py)."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_cnn import evaluate  # noqa: E402
from keras_cnn.errors import UserError  # noqa: E402


def test_mistake_keeper_keeps_the_most_confident():
    keeper = evaluate.MistakeKeeper(capacity=2)
    for position, confidence in enumerate([0.6, 0.9, 0.7, 0.95, 0.5]):
        keeper.add(position, np.full((2, 2), position, np.uint8), confidence)
    positions, images = keeper.positions_and_images()
    assert positions == [3, 1] and images[0][0, 0] == 3


# ----------------------------------------------------------------------------- a handmade run

IMAGE_SIZE = 16
RUN_LABELS = ["bird", "cat", "dog"]


def _png(seed: int, channels: int = 3) -> bytes:
    from PIL import Image

    generator = np.random.default_rng(seed)
    pixels = generator.integers(0, 256, size=(20, 24, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels[..., 0] if channels == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiny_model(outputs: int, activation: str):
    import keras

    keras.utils.set_random_seed(3)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(outputs, activation=activation)(x))


def make_run(root: Path, labels=RUN_LABELS, outputs=3, activation="softmax") -> Path:
    """A finished run as the training command leaves it: model, config, labels, history, split, images."""
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.runs import RunDirectory

    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    rows = []
    for index in range(18):
        data = _png(index)
        object_id = hashlib.sha1(data).hexdigest() + ".png"
        (images_dir / object_id).write_bytes(data)
        part = ("train", "validation", "test")[index % 3]
        rows.append({"objectId": object_id, "value": labels[(index // 3) % len(labels)], "type": part})
    split_csv = root / "split.csv"
    pd.DataFrame(rows).to_csv(split_csv, index=False)

    run = RunDirectory(root / "run").create()
    _tiny_model(outputs, activation).save(run.model_path)
    config = RunConfig(
        command="train",
        model=ModelConfig(kind="scratch", name="tiny", num_classes=len(labels),
                          input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), binary=outputs == 1),
        data=DataConfig(split=str(split_csv), images=str(images_dir), image_size=(IMAGE_SIZE, IMAGE_SIZE),
                        channels=3),
        training=TrainingConfig(epochs=4, batch_size=4),
        labels=list(labels),
    )
    run.write_config(config.to_dict())
    run.write_labels(list(labels))
    history = pd.DataFrame({
        "stage": ["head", "head", "finetune", "finetune"], "epoch": [1, 2, 3, 4], "seconds": [1.0] * 4,
        "loss": [1.1, 0.9, 0.7, 0.6], "accuracy": [0.4, 0.5, 0.6, 0.7],
        "val_loss": [1.2, 1.0, 0.9, 0.85], "val_accuracy": [0.3, 0.45, 0.55, 0.6],
    })
    history.to_csv(run.history_path, index=False)
    return run.root


def _stub_load_subset(monkeypatch, run_root: Path, channels: int = 3):
    """load_subset without keras_cnn.data.pipeline: decode the split's test images with images.py."""
    import tensorflow as tf

    from keras_cnn.data.images import load_image

    def fake(run_config, run_dir, subset, batch_size):
        frame = pd.read_csv(run_config.data.split)
        frame = frame[frame["type"] == subset]
        labels = (Path(run_dir) / "labels.txt").read_text().split()
        paths = [str(Path(run_config.data.images) / name) for name in frame["objectId"]]
        def load(path):
            return tf.cast(load_image(tf.io.read_file(path), (IMAGE_SIZE, IMAGE_SIZE), channels), tf.float32)

        dataset = tf.data.Dataset.from_tensor_slices(paths).map(load, num_parallel_calls=tf.data.AUTOTUNE)
        dataset = dataset.batch(batch_size)
        return frame["objectId"].tolist(), np.array([labels.index(str(v)) for v in frame["value"]]), dataset

    monkeypatch.setattr(evaluate, "load_subset", fake)


EVAL_FILES = ("metrics.json", "predictions.csv", "confusion_matrix.png", "training.png", "reliability.png",
              "coverage.png", "misclassified.png", "report.html")


def _check_outputs(run_root: Path, summary: dict, labels):
    eval_dir = run_root / "eval"
    for name in EVAL_FILES:
        assert (eval_dir / name).stat().st_size > 0, name
    assert not [path.name for path in eval_dir.iterdir() if ".tmp-" in path.name]
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    predictions = pd.read_csv(eval_dir / "predictions.csv", dtype={"true": str, "predicted": str})
    assert list(predictions.columns) == ["objectId", "true", "predicted", "confidence", *labels]
    assert len(predictions) == metrics["num_samples"] == summary["num_samples"] == 6
    probabilities = predictions[list(labels)].to_numpy()
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    true_index = [list(labels).index(value) for value in predictions["true"]]
    assert metrics["accuracy"] == pytest.approx(np.mean(predictions["true"] == predictions["predicted"]))
    # The loss is the mean cross-entropy of the written probabilities.
    expected_loss = -np.mean(np.log(probabilities[np.arange(6), true_index]))
    assert metrics["loss"] == pytest.approx(expected_loss, rel=1e-3)
    assert summary["accuracy"] == metrics["accuracy"] and summary["files"]["report"].endswith("report.html")
    assert sum(map(sum, metrics["confusion_matrix"])) == 6
    assert metrics["subset"] == "test"
    return metrics


def test_evaluate_run_writes_every_file(tmp_path, monkeypatch):
    run_root = make_run(tmp_path)
    _stub_load_subset(monkeypatch, run_root)
    summary = evaluate.evaluate_run(run_root)
    _check_outputs(run_root, summary, RUN_LABELS)
    page = (run_root / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 5

    # The validation part goes beside the test report, never over it.
    summary = evaluate.evaluate_run(run_root, subset="validation")
    assert summary["output_dir"] == str(run_root / "eval" / "validation")
    assert json.loads((run_root / "eval" / "validation" / "metrics.json").read_text())["subset"] == "validation"
    assert json.loads((run_root / "eval" / "metrics.json").read_text())["subset"] == "test"
    assert (run_root / "eval" / "report.html").read_text() == page


def test_evaluate_run_with_one_sigmoid_output(tmp_path, monkeypatch):
    run_root = make_run(tmp_path, labels=["0", "1"], outputs=1, activation="sigmoid")
    _stub_load_subset(monkeypatch, run_root)
    summary = evaluate.evaluate_run(run_root)
    metrics = _check_outputs(run_root, summary, ["0", "1"])
    assert "roc_auc" in summary and summary["roc_auc"] == metrics["roc_auc"]


def test_evaluate_run_through_the_real_pipeline(tmp_path):
    """Needs keras_cnn.data.pipeline (make_dataset, subset_frame)."""
    run_root = make_run(tmp_path)
    summary = evaluate.evaluate_run(run_root, batch_size=4)
    _check_outputs(run_root, summary, RUN_LABELS)
    frame = pd.read_csv(tmp_path / "split.csv")
    test_ids = frame.loc[frame["type"] == "test", "objectId"].tolist()
    assert pd.read_csv(run_root / "eval" / "predictions.csv")["objectId"].tolist() == test_ids

    # Images the training run skipped as unreadable stay out; --subset validation, elsewhere.
    validation_ids = frame.loc[frame["type"] == "validation", "objectId"].tolist()
    pd.DataFrame({"objectId": validation_ids[:1], "reason": ["unreadable"]}).to_csv(
        run_root / "skipped_images.csv", index=False)
    summary = evaluate.evaluate_run(run_root, subset="validation", output_dir=tmp_path / "validation_eval")
    written = pd.read_csv(tmp_path / "validation_eval" / "predictions.csv")["objectId"].tolist()
    assert written == validation_ids[1:] and summary["num_samples"] == 5
    assert json.loads((tmp_path / "validation_eval" / "metrics.json").read_text())["subset"] == "validation"


@pytest.fixture(scope="module")
def calibrated_report(tmp_path_factory):
    """The handmade run calibrated (kcnn calibrate) and evaluated with --target-accuracy through the real
    pipeline; the heat maps evaluate drew over the mistakes are kept as it passed them to the picture."""
    from keras_cnn import report
    from keras_cnn.run_calibration import calibrate_run

    run_root = make_run(tmp_path_factory.mktemp("calibrated"))
    calibrate_run(run_root, batch_size=4)
    drawn = {}
    plot_misclassified = report.plot_misclassified

    def keep(images, *arguments, **options):
        drawn.update(images=images, **options)
        return plot_misclassified(images, *arguments, **options)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "plot_misclassified", keep)
        summary = evaluate.evaluate_run(run_root, batch_size=4, target_accuracy=0.5)
    return {"run": run_root, "summary": summary, "drawn": drawn}


def test_the_mistakes_grid_shows_where_the_model_looked(calibrated_report):
    from keras_cnn.explain import explain_images
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.opened import open_model

    drawn, summary = calibrated_report["drawn"], calibrated_report["summary"]
    mistakes = [row for row in pd.read_csv(summary["files"]["predictions"], dtype=str).itertuples()
                if row.true != row.predicted]
    assert mistakes and len(drawn["images"]) == len(drawn["heatmaps"]) == len(drawn["object_ids"]) == len(mistakes)
    # Each tile's map is Grad-CAM of that tile's own image (for the class predicted), at the model's input size.
    opened = open_model(load_model(calibrated_report["run"] / "model.keras"))
    expected = explain_images(opened, np.stack(drawn["images"]))["heatmap"].numpy()
    assert np.asarray(drawn["heatmaps"]).shape == (len(mistakes), IMAGE_SIZE, IMAGE_SIZE)
    np.testing.assert_allclose(np.asarray(drawn["heatmaps"]), expected, atol=1e-5)
    assert np.min(drawn["heatmaps"]) >= 0 and np.max(drawn["heatmaps"]) <= 1 and np.max(drawn["heatmaps"]) > 0.5


def test_the_report_shows_calibration_coverage_and_heat_maps_in_a_browser(calibrated_report, chromium_page):
    """report.html, opened in headless Chromium: the reliability diagram (before and after the temperature),
    the coverage-accuracy curve and the mistakes with their heat maps are pictures that load, with their
    captions, beside the calibration and threshold tables."""
    summary = calibrated_report["summary"]
    chromium_page.goto(Path(summary["files"]["report"]).resolve().as_uri())
    captions = [caption.strip() for caption in chromium_page.locator("figure figcaption").all_inner_texts()]
    assert {"Reliability diagram", "Coverage and accuracy",
            "Most confident mistakes" + evaluate.MISTAKE_HEATMAP_CAPTION} <= set(captions), captions
    for caption in captions:
        image = chromium_page.locator(f'figure img[alt="{caption}"]')
        assert image.evaluate("image => image.complete && image.naturalWidth > 200 && image.naturalHeight > 200")
    # Two panels (the model's own probabilities and the calibrated ones): the diagram is wider than tall.
    width, height = chromium_page.locator('figure img[alt="Reliability diagram"]').evaluate(
        "image => [image.naturalWidth, image.naturalHeight]")
    assert width > 1.5 * height
    headings = chromium_page.locator("h2").all_inner_texts()
    assert "Calibration" in headings and "Answering only when confident" in headings
    temperature = json.loads((calibrated_report["run"] / "calibration.json").read_text())["temperature"]
    assert f"Temperature {temperature:.4g}" in chromium_page.inner_text("body")


def test_load_subset_for_array_datasets(tmp_path):
    """MNIST-style arrays: test = x_test; validation = the last 20 % of x_train, adapted to the input."""
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig

    generator = np.random.default_rng(0)
    archive = tmp_path / "mnist.npz"
    np.savez(archive,
             x_train=generator.integers(0, 256, (10, 8, 8), dtype=np.uint8), y_train=np.arange(10) % 3,
             x_test=generator.integers(0, 256, (4, 8, 8), dtype=np.uint8), y_test=np.array([2, 1, 0, 9]))
    (tmp_path / "labels.txt").write_text("".join(f"{digit}\n" for digit in range(10)))
    config = RunConfig(command="train", model=ModelConfig(input_shape=(12, 12, 3)),
                       data=DataConfig(dataset="mnist", dataset_path=str(archive),
                                       image_size=(12, 12), channels=3))

    object_ids, true_indices, dataset = evaluate.load_subset(config, tmp_path, "validation", batch_size=3)
    assert object_ids == ["train/000008", "train/000009"]
    assert true_indices.tolist() == [2, 0]
    batches = list(dataset)
    assert batches[0].shape == (2, 12, 12, 3) and batches[0].dtype.name == "uint8"   # the model casts

    object_ids, true_indices, dataset = evaluate.load_subset(config.to_dict(), tmp_path, "test", batch_size=3)
    assert object_ids[0] == "test/000000" and true_indices.tolist() == [2, 1, 0, 9]
    assert [len(batch) for batch in dataset] == [3, 1]

    with pytest.raises(UserError, match="'everything'"):
        evaluate.load_subset(config, tmp_path, "everything", batch_size=3)


def test_kcnn_evaluate_on_a_bad_path_exits_2_with_one_line(tmp_path):
    from keras_cnn.cli import cli

    result = CliRunner().invoke(cli, ["evaluate", "--run", str(tmp_path / "missing")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "config.json is missing" in lines[0] and "missing" in lines[0]


def test_kcnn_evaluate_json_prints_one_object(tmp_path, monkeypatch):
    from keras_cnn.cli import cli

    run_root = make_run(tmp_path)
    _stub_load_subset(monkeypatch, run_root)
    result = CliRunner().invoke(cli, ["evaluate", "--run", str(run_root), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["num_samples"] == 6 and Path(summary["files"]["report"]).is_file()

    result = CliRunner().invoke(cli, ["evaluate", "--run", str(run_root)])
    assert result.exit_code == 0 and "accuracy" in result.stdout and "report.html" in result.stdout


# ----------------------------------------------------------------------------- test-time augmentation


def test_tta_views_are_the_named_transformations():
    import tensorflow as tf

    from keras_cnn.errors import UserError
    from keras_cnn.tta import average_views, tta_views, view_names

    assert view_names(3, flip=False) == ["identity", "crop_center", "crop_top_left"]
    assert view_names(3, flip=True) == ["identity", "flip", "crop_center"]
    with pytest.raises(UserError, match="between 1 and 6 views"):
        view_names(7, flip=False)
    images = np.random.default_rng(0).uniform(0, 255, (2, 10, 10, 3)).astype(np.float32)
    views = tta_views(images, ["identity", "flip", "crop_center"]).numpy()
    np.testing.assert_array_equal(views[:2], images)
    np.testing.assert_array_equal(views[2:4], images[:, :, ::-1])
    expected = tf.image.crop_and_resize(images, [[0.05, 0.05, 0.95, 0.95]] * 2, [0, 1], (10, 10)).numpy()
    np.testing.assert_allclose(views[4:], expected, atol=1e-4)
    np.testing.assert_allclose(average_views(np.arange(6.0).reshape(6, 1), 3).numpy(), [[2.0], [3.0]])


@pytest.mark.parametrize("outputs, activation, labels", [(3, "softmax", RUN_LABELS), (1, "sigmoid", ["0", "1"])])
def test_evaluate_with_tta_reports_both_and_averages_the_views(tmp_path, monkeypatch, outputs, activation, labels):
    from keras_cnn.models.loading import load_model
    from keras_cnn.tta import tta_views

    run_root = make_run(tmp_path, labels=labels, outputs=outputs, activation=activation)
    _stub_load_subset(monkeypatch, run_root)
    summary = evaluate.evaluate_run(run_root, tta=4)
    metrics = json.loads((run_root / "eval" / "metrics.json").read_text())
    assert summary["tta"]["views"] == metrics["tta"]["views"] == ["identity", "crop_center", "crop_top_left",
                                                                   "crop_top_right"]
    assert metrics["accuracy"] == summary["accuracy"]   # the plain numbers stay where they were
    # The TTA loss is the cross-entropy of the view-averaged probabilities, computed here by hand.
    from keras_cnn.config import RunConfig

    config = RunConfig.from_dict(json.loads((run_root / "config.json").read_text()))
    _, true_indices, dataset = evaluate.load_subset(config, run_root, "test", 4)
    model = load_model(run_root / "model.keras")
    averaged = []
    for batch in dataset:
        out = np.asarray(model.predict_on_batch(tta_views(batch, metrics["tta"]["views"])))
        out = np.concatenate([1 - out, out], axis=1) if outputs == 1 else out
        averaged.append(out.reshape(4, -1, len(labels)).mean(axis=0))
    averaged = np.concatenate(averaged)
    expected_loss = -np.mean(np.log(averaged[np.arange(len(true_indices)), true_indices]))
    assert metrics["tta"]["loss"] == pytest.approx(expected_loss, rel=1e-3)
    assert metrics["tta"]["loss"] != pytest.approx(metrics["loss"], rel=1e-6)
    page = (run_root / "eval" / "report.html").read_text()
    assert "TTA (4 views)" in page and "crop_top_right" in page
