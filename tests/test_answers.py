"""Answers you can trust, end to end on generated patch images (the class is the colour of a small patch at
a random place): the temperature fitted when the stage ends, evaluate's calibration and threshold, the
calibrated export with its heat-map signature, predict's "unknown" and heat maps, kcnn serve, kcnn calibrate."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_cnn.calibration import class_probabilities, fit_temperature, single_label_targets  # noqa: E402
from keras_cnn.cli import cli  # noqa: E402
from keras_cnn.data.probes import PATCH_TABLE, patch_hit, write_patch_images  # noqa: E402
from keras_cnn.metrics import accuracy_lower_bound  # noqa: E402

IMAGE_SIZE = 32
ARCHITECTURE = "cifar10_net"


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def invoke_json(*args):
    result = invoke(*args, "--json")
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def patch_run(tmp_path_factory):
    """600 patch images split by kcnn, and a cifar10_net trained on them for 6 epochs (calibrated when it ends)."""
    from keras_cnn.config import DataConfig, ModelConfig, RunConfig, TrainingConfig
    from keras_cnn.data.collection import split_to_file
    from keras_cnn.train.fit import train_scratch

    root = tmp_path_factory.mktemp("patches")
    label_csv = write_patch_images(root / "images", per_class=200, size=IMAGE_SIZE)
    split = split_to_file(str(label_csv), str(root / "split.csv"))["output"]
    summary = train_scratch(RunConfig(command="train", model=ModelConfig(kind="scratch", name=ARCHITECTURE),
                                      data=DataConfig(split=str(split), images=str(root / "images")),
                                      training=TrainingConfig(epochs=6, batch_size=32)), root / "run")
    return {"root": root, "run": root / "run", "split": Path(split), "images": root / "images", "summary": summary}


@pytest.fixture(scope="module")
def evaluated(patch_run):
    """``kcnn evaluate --target-accuracy 0.95``: the threshold is chosen and stored in the run; its summary
    and (under ``"stderr"``) what it said."""
    result = invoke("evaluate", "--run", patch_run["run"], "--target-accuracy", "0.95", "--json")
    assert result.exit_code == 0, result.output[-3000:]
    return {**json.loads(result.stdout), "stderr": result.stderr}


@pytest.fixture(scope="module")
def exported(patch_run, evaluated):
    from keras_cnn.export import export_run

    return export_run(patch_run["run"], patch_run["root"] / "export")


def part_files(patch_run, part: str) -> list[Path]:
    frame = pd.read_csv(patch_run["split"])
    return [patch_run["images"] / name for name in frame.loc[frame["type"] == part, "objectId"]]


def run_logits(run: Path, images) -> tuple[np.ndarray, str]:
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.opened import open_model

    opened = open_model(load_model(run / "model.keras"))
    logits = np.asarray(opened.logits(opened.graph(np.asarray(images, np.float32))["penultimate"]), np.float64)
    return logits, opened.activation


def test_the_stage_fits_its_temperature_on_the_validation_part(patch_run):
    from keras_cnn.config import RunConfig
    from keras_cnn.run_data import load_part
    from keras_cnn.runs import RunDirectory

    run = RunDirectory(patch_run["run"])
    record = json.loads(run.calibration_path.read_text())
    assert record["stage"] == "train" and record["fitted_on"]["part"] == "validation"
    # The same fit, redone by hand on the validation part's logits.
    part = load_part(run, RunConfig.from_dict(run.read_config()), "validation", 64)
    logits, _ = run_logits(run.root, np.concatenate([np.asarray(batch) for batch in part.images()]))
    fit = fit_temperature(logits, single_label_targets(part.true_indices, "softmax"))
    assert record["temperature"] == pytest.approx(fit.temperature, rel=1e-6)
    assert record["fitted_on"]["images"] == len(part.true_indices)
    assert record["validation"]["nll_after"] <= record["validation"]["nll_before"]
    # The stage result and metrics.json carry it; the test part's numbers are reported beside it.
    summary = patch_run["summary"]["calibration"]
    assert summary["temperature"] == record["temperature"] and summary["part"] == "test"
    assert json.loads(run.metrics_path.read_text())["stages"]["train"]["calibration"] == record


def test_evaluate_reports_calibration_and_keeps_the_threshold(patch_run, evaluated):
    record = json.loads((patch_run["run"] / "calibration.json").read_text())
    metrics = json.loads((patch_run["run"] / "eval" / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert set(calibration) == {"temperature", "ece_before", "ece_after", "nll_before", "nll_after",
                                "brier_before", "brier_after"}
    assert calibration["temperature"] == record["temperature"]
    assert calibration == pytest.approx(record["test"])
    # Calibrating never changes an answer: the accuracy is the stage's (the model's own outputs).
    assert metrics["accuracy"] == pytest.approx(patch_run["summary"]["test_accuracy"])
    selective = metrics["selective"]
    assert {"target_accuracy", "threshold", "coverage", "accuracy"} <= set(selective)
    assert selective["target_accuracy"] == 0.95 and selective["num_samples"] == metrics["num_samples"]
    assert record["reject_below"]["threshold"] == selective["threshold"] == evaluated["selective"]["threshold"]
    chosen = record["reject_below"]["validation"]
    assert chosen["accuracy"] >= 0.95
    # How far those few validation images vouch for the target, and a line saying so when they do not.
    right = round(chosen["accuracy"] * chosen["accepted"])
    assert chosen["accuracy_lower_bound"] == pytest.approx(accuracy_lower_bound(right, chosen["accepted"]))
    assert (chosen["accuracy_lower_bound"] < 0.95) is ("at 95 % confidence" in evaluated["stderr"])
    for picture in ("reliability.png", "coverage.png", "misclassified.png"):
        assert (patch_run["run"] / "eval" / picture).stat().st_size > 0
    page = (patch_run["run"] / "eval" / "report.html").read_text()
    assert "Calibration" in page and "Answering only when confident" in page
    # A later evaluation without the option keeps the stored threshold.
    again = invoke_json("evaluate", "--run", patch_run["run"], "--subset", "validation")
    assert again["selective"]["threshold"] == selective["threshold"]


def test_the_export_is_calibrated_and_its_signatures_agree(patch_run, exported):
    import tensorflow as tf

    from keras_cnn.predict import load_exported_model, predict_files

    metadata = json.loads(Path(exported["metadata"]).read_text())
    record = json.loads((patch_run["run"] / "calibration.json").read_text())
    assert metadata["calibration"]["temperature"] == record["temperature"]
    assert metadata["reject_below"] == record["reject_below"]["threshold"]
    assert metadata["explain"]["signature"] == "serving_explain" and metadata["explain"]["feature_layer"] == "conv2"
    files = part_files(patch_run, "test")[:8]
    model = load_exported_model(exported["path"])
    results, failures = predict_files(model, files)
    assert not failures
    # predict's probabilities are the Keras model's logits divided by the run's temperature.
    from PIL import Image

    logits, activation = run_logits(patch_run["run"], np.stack([np.asarray(Image.open(path)) for path in files]))
    expected = class_probabilities(logits, record["temperature"], activation)
    np.testing.assert_allclose([result["probabilities"] for result in results], expected, atol=2e-5)
    assert np.abs(expected - class_probabilities(logits, None, activation)).max() > 1e-3   # T mattered
    # serving_explain answers as serving_default does, and adds [batch, height, width] maps in 0..1.
    encoded = tf.constant([path.read_bytes() for path in files])
    plain = model.saved_model.signatures["serving_default"](image_bytes=encoded)
    explained = model.saved_model.signatures["serving_explain"](image_bytes=encoded)
    np.testing.assert_allclose(explained["probabilities"].numpy(), plain["probabilities"].numpy(), atol=1e-6)
    heatmaps = explained["heatmap"].numpy()
    assert heatmaps.shape == (len(files), IMAGE_SIZE, IMAGE_SIZE) and heatmaps.min() >= 0 and heatmaps.max() <= 1


def test_predict_answers_unknown_below_the_threshold_and_finds_the_patches(patch_run, exported, tmp_path):
    files = part_files(patch_run, "test")
    threshold = json.loads(Path(exported["metadata"]).read_text())["reject_below"]
    answer = invoke_json("predict", "--model", exported["path"], "--explain", tmp_path / "maps", *files)
    predictions = answer["predictions"]
    assert len(predictions) == len(files) and not answer["failures"]
    for prediction in predictions:   # the export's threshold applies when none is given
        assert prediction["reject_below"] == threshold
        assert prediction["rejected"] is (prediction["probability"] < threshold)
    # Where the model looked: the heat map's peak falls on the coloured patch.
    patches = pd.read_csv(patch_run["images"] / PATCH_TABLE).set_index("objectId")
    hits = [patch_hit(prediction["peak"], *patches.loc[Path(prediction["path"]).name, ["top", "left", "size"]],
                      IMAGE_SIZE) for prediction in predictions]
    assert np.mean(hits) >= 0.9, f"{sum(hits)} of {len(hits)} peaks on the patch"
    assert all(Path(prediction["heatmap"]).is_file() for prediction in predictions)
    assert len(list((tmp_path / "maps").iterdir())) == len(files)
    # --reject-below overrides: the least sure answers, below the third least sure, are rejected; the label
    # stays the top label, and the table says unknown.
    least_sure = sorted(predictions, key=lambda prediction: prediction["probability"])[:6]
    strict_threshold = least_sure[2]["probability"]
    chosen = [prediction["path"] for prediction in least_sure]
    strict = invoke_json("predict", "--model", exported["path"], "--reject-below", strict_threshold, *chosen)
    rejected = [prediction for prediction in strict["predictions"] if prediction["rejected"]]
    assert [prediction["path"] for prediction in rejected] == [path for path, prediction in zip(chosen, least_sure)
                                                               if prediction["probability"] < strict_threshold]
    assert rejected and all(prediction["label"] in ("red", "green", "blue") for prediction in rejected)
    table = invoke("predict", "--model", exported["path"], "--reject-below", strict_threshold, *chosen)
    assert table.exit_code == 0
    first = rejected[0]
    assert f"unknown (top: {first['label']} {first['probability']:.2f})" in table.stdout


def test_kcnn_serve_gives_calibrated_answers_and_heat_maps(patch_run, exported):
    pytest.importorskip("starlette", reason="kcnn serve needs the serve extra: pip install -e '.[serve]'")
    from starlette.testclient import TestClient

    from keras_cnn.predict import load_exported_model, predict_files
    from keras_cnn.serve.app import create_app
    from keras_cnn.serve.models import load_repository

    files = part_files(patch_run, "test")[:3]
    expected, _ = predict_files(load_exported_model(exported["path"]), files)
    app = create_app(load_repository(Path(exported["path"]).parent, name="patches"))
    with TestClient(app) as client:
        description = client.get("/kcnn/v1/models").json()["models"][0]
        assert description["calibration"]["temperature"] == pytest.approx(
            json.loads(Path(exported["metadata"]).read_text())["calibration"]["temperature"])
        assert description["explain"] is True and description["answer_signature"] == "serving_explain"
        response = client.post("/kcnn/v1/models/patches/classify",
                               files=[("image", (path.name, path.read_bytes(), "image/png")) for path in files])
        assert response.status_code == 200, response.text
    results = response.json()["results"]
    for result, plain in zip(results, expected):
        np.testing.assert_allclose(result["probabilities"], plain["probabilities"], atol=1e-6)
        assert result["rejected"] is plain["rejected"] and "png" in result["heatmap"]
        assert len(result["heatmap"]["peak"]) == 2


def test_kcnn_calibrate_fits_again_and_drops_the_stale_threshold(patch_run, evaluated, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(patch_run["run"], copy)
    before = json.loads((copy / "calibration.json").read_text())
    assert before["reject_below"]
    result = CliRunner().invoke(cli, ["calibrate", "--run", str(copy), "--json"])
    assert result.exit_code == 0, result.output
    refitted = json.loads(result.stdout)
    assert refitted["temperature"] == pytest.approx(before["temperature"], rel=1e-9)
    assert "no longer applies" in result.stderr
    assert "reject_below" not in json.loads((copy / "calibration.json").read_text())
    # The finished stage is found finished whatever --calibrate says (it acts after the fit).
    rerun = invoke_json("train", ARCHITECTURE, "--split", patch_run["split"], "--images", patch_run["images"],
                        "--epochs", "6", "--batch-size", "32", "--out", copy, "--no-calibrate")
    assert rerun["epochs"] == 6 and (copy / "calibration.json").exists()


def test_a_run_without_a_validation_part_says_it_is_not_calibrated(patch_run, tmp_path):
    frame = pd.read_csv(patch_run["split"])
    frame = pd.concat([frame[frame["type"] == "train"].head(30), frame[frame["type"] == "test"].head(9)])
    frame.to_csv(tmp_path / "split.csv", index=False)
    result = invoke("train", "lenet", "--split", tmp_path / "split.csv", "--images", patch_run["images"],
                    "--epochs", "1", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    assert [line for line in result.stderr.splitlines() if "not calibrated" in line and "no validation part" in line]
    assert not (tmp_path / "run" / "calibration.json").exists()
    for command in (["calibrate"], ["evaluate", "--target-accuracy", "0.9"]):
        refused = invoke(*command, "--run", tmp_path / "run")
        assert refused.exit_code == 2 and "validation part" in refused.stderr
        assert refused.stderr.strip().count("\n") == 0
