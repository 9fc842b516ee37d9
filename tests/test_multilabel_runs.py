"""Multi-label runs end to end through the command line, on generated images whose labels are bars:
split, train (a split CSV, a folder tree with shared files), transfer and fine-tuning with their
caches, regularisation on label vectors, evaluate, export, predict, serve and lr-find."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import write_hub_module
from keras_cnn.cli import cli
from keras_cnn.errors import UserError

LABELS = ("bird", "cat", "dog")
SIDE = 28


def invoke_json(*args):
    result = CliRunner().invoke(cli, [str(arg) for arg in args] + ["--json"])
    assert result.exit_code == 0, result.output[-3000:]
    return json.loads(result.stdout)


def bar_image(labels: set[str], seed: int) -> np.ndarray:
    """A grey picture with a bright bar for each of its labels (label k: rows 3 + 9k .. 5 + 9k)."""
    generator = np.random.default_rng(seed)
    pixels = generator.integers(0, 70, (SIDE, SIDE), dtype=np.uint8)
    for index, label in enumerate(LABELS):
        if label in labels:
            start = int(generator.integers(0, SIDE // 3))
            pixels[3 + 9 * index:5 + 9 * index, start:start + SIDE // 2] = 255
    return pixels


@pytest.fixture(scope="module")
def tagged(tmp_path_factory):
    """160 pictures, each with a random set of the labels (some none), and tags.csv joining them by '|'."""
    root = tmp_path_factory.mktemp("bars")
    generator = np.random.default_rng(11)
    lines, sets = ["objectId,tags"], {}
    for index in range(160):
        found = {label for label in LABELS if generator.random() < 0.45}
        name = f"{index:03d}.png"
        Image.fromarray(bar_image(found, index)).save(root / name)
        sets[name] = found
        lines.append(f"{name},{'|'.join(sorted(found))}")
    (root / "tags.csv").write_text("\n".join(lines) + "\n")
    return root, sets


@pytest.fixture(scope="module")
def split_csv(tagged):
    root, _ = tagged
    output = root.parent / "split.csv"
    result = invoke_json("split", root / "tags.csv", "--images", root, "--multi-label", "--label-delimiter", "|",
                         "--label-column", "tags", "-o", output)
    assert result["multi_label"] and result["labels"] == list(LABELS)
    return output


@pytest.fixture(scope="module")
def scratch_run(tagged, split_csv, tmp_path_factory):
    """lenet trained on the multi-label split CSV (no --multi-label: the CSV says so)."""
    root, _ = tagged
    run = tmp_path_factory.mktemp("runs") / "lenet"
    summary = invoke_json("train", "lenet", "--split", split_csv, "--images", root, "--epochs", 6,
                          "--batch-size", 16, "--out", run)
    return run, summary


@pytest.fixture(scope="module")
def exported(scratch_run, tmp_path_factory):
    """Every format, and the TTA signature (each verified against the calibrated Keras model)."""
    run, _ = scratch_run
    out = tmp_path_factory.mktemp("export")
    return out, invoke_json("export", "--run", run, "--out", out, "--format", "saved_model", "--format", "onnx",
                            "--format", "litert", "--tta", 2)


def test_a_run_on_a_multi_label_split_is_multi_label_with_thresholds_chosen_on_validation(scratch_run):
    run, summary = scratch_run
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["multi_label"] and config["training"]["loss"] == "binary_crossentropy"
    assert summary["multi_label"] and summary["test_macro_map"] > 0.8, summary   # the bars are easy to see
    record = json.loads((run / "thresholds.json").read_text())
    assert record["stage"] == "train" and record["chosen_on"]["part"] == "validation"
    assert set(record["thresholds"]) == set(LABELS) and summary["thresholds"] == record["thresholds"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["multi_label"] and metrics["stages"]["train"]["thresholds"] == record
    history = pd.read_csv(run / "history.csv")
    assert {"accuracy", "val_accuracy", "loss", "val_loss"} <= set(history.columns)   # accuracy: per label
    assert history["accuracy"].between(0, 1).all()


def calibrated_probabilities(run, pixels) -> np.ndarray:
    """sigmoid(logits / T) of the run's model on ``pixels``: its logits from the model opened up."""
    from keras_cnn.models.loading import load_model
    from keras_cnn.models.opened import open_model

    temperature = json.loads((run / "calibration.json").read_text())["temperature"]
    opened = open_model(load_model(run / "model.keras"))
    logits = np.asarray(opened.logits(opened.graph.predict_on_batch(pixels)["penultimate"]), np.float64)
    return 1.0 / (1.0 + np.exp(-logits / temperature))


def part_pixels(root, split_csv, part: str):
    """(names, float32 pixels, 0/1 targets) of one part of the split, read here."""
    from keras_cnn.data.images import load_image

    split = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
    rows = split[split["type"] == part]
    pixels = np.stack([load_image((root / name).read_bytes(), (SIDE, SIDE), 1).numpy()
                       for name in rows["objectId"]]).astype("float32")
    targets = np.array([[label in cell.split(";") for label in LABELS] for cell in rows["labels"]], np.float64)
    return list(rows["objectId"]), pixels, targets


def test_the_temperature_is_fitted_first_and_the_thresholds_chosen_on_calibrated_probabilities(
        scratch_run, tagged, split_csv):
    from keras_cnn.metrics import best_f1_thresholds

    run, summary = scratch_run
    root, _ = tagged
    record = json.loads((run / "calibration.json").read_text())
    assert record["multi_label"] and record["kind"] == "sigmoid" and record["stage"] == "train"
    assert record["temperature"] > 0 and record["temperature"] != 1.0
    assert record["validation"]["nll_after"] <= record["validation"]["nll_before"]
    assert summary["calibration"]["temperature"] == record["temperature"]
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert thresholds["temperature"] == record["temperature"]
    _, pixels, targets = part_pixels(root, split_csv, "validation")
    assert record["fitted_on"]["images"] == len(targets)
    np.testing.assert_allclose([thresholds["thresholds"][label] for label in LABELS],
                               best_f1_thresholds(targets, calibrated_probabilities(run, pixels)), atol=1e-5)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["stages"]["train"]["calibration"] == record


def test_evaluate_scores_every_label_at_its_stored_threshold(scratch_run, tagged, split_csv):
    from sklearn.metrics import average_precision_score

    run, summary = scratch_run
    evaluation = invoke_json("evaluate", "--run", run, "--tta", 2)
    assert evaluation["multi_label"] and evaluation["macro_map"] == pytest.approx(summary["test_macro_map"])
    assert evaluation["macro_f1"] == pytest.approx(summary["test_macro_f1"])
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    predictions = pd.read_csv(run / "eval" / "predictions.csv", dtype={"true": str, "predicted": str},
                              keep_default_na=False)
    probabilities = predictions[list(LABELS)].to_numpy()
    # The calibrated probabilities, those the thresholds were chosen on.
    names, pixels, _ = part_pixels(tagged[0], split_csv, "test")
    assert predictions["objectId"].tolist() == names
    np.testing.assert_allclose(probabilities, calibrated_probabilities(run, pixels), atol=1e-5)
    above = probabilities >= np.array([thresholds[label] for label in LABELS])
    assert predictions["predicted"].tolist() == [";".join(label for label, on in zip(LABELS, row) if on)
                                                 for row in above]
    truth = np.array([[label in text.split(";") for label in LABELS] for text in predictions["true"]])
    metrics = json.loads((run / "eval" / "metrics.json").read_text())
    assert metrics["macro_map"] == pytest.approx(np.mean([average_precision_score(truth[:, index],
                                                                                  probabilities[:, index])
                                                          for index in range(3) if truth[:, index].any()]), abs=1e-5)
    assert metrics["hamming_loss"] == pytest.approx(np.mean(truth != above))
    assert metrics["calibration"]["temperature"] == json.loads((run / "calibration.json").read_text())["temperature"]
    assert metrics["calibration"]["scored_on"].startswith("every (image, label) pair")
    # --tta: each label's calibrated probability averaged over the views.
    from keras_cnn.metrics import binary_cross_entropy
    from keras_cnn.tta import tta_views

    views = metrics["tta"]["views"]
    viewed = calibrated_probabilities(run, tta_views(pixels, views).numpy())
    averaged = viewed.reshape(len(views), len(pixels), len(LABELS)).mean(axis=0)
    assert len(views) == 2 and metrics["tta"]["loss"] == pytest.approx(binary_cross_entropy(averaged, truth), rel=1e-4)
    page = (run / "eval" / "report.html").read_text()
    assert "Per label" in page and "Labels most often missed" in page and "Precision-recall curves" in page
    assert "Calibration" in page and "yes/no decision" in page
    assert (run / "eval" / "precision_recall.png").stat().st_size > 0
    assert (run / "eval" / "reliability.png").stat().st_size > 0


def test_kcnn_calibrate_fits_the_temperature_again_and_chooses_the_thresholds_again(scratch_run, tmp_path):
    import shutil

    run, _ = scratch_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    fitted = json.loads((run / "calibration.json").read_text())
    chosen = json.loads((run / "thresholds.json").read_text())
    # As a run trained with --no-calibrate has them: no temperature, thresholds of the model's own probabilities.
    (copy / "calibration.json").unlink()
    (copy / "thresholds.json").write_text(json.dumps({**chosen, "temperature": None,
                                                      "thresholds": dict.fromkeys(LABELS, 0.99)}))
    result = invoke_json("calibrate", "--run", copy)
    assert result["multi_label"] and result["temperature"] == pytest.approx(fitted["temperature"], rel=1e-6)
    again = json.loads((copy / "thresholds.json").read_text())
    assert again["thresholds"] == pytest.approx(chosen["thresholds"], abs=1e-6) == result["thresholds"]
    assert again["temperature"] == pytest.approx(fitted["temperature"], rel=1e-6)
    stage = json.loads((copy / "metrics.json").read_text())["stages"]["train"]
    assert stage["thresholds"]["thresholds"] == again["thresholds"]
    assert stage["calibration"]["temperature"] == result["temperature"]


def test_the_export_answers_in_plain_tensorflow_as_the_keras_model(scratch_run, exported, tagged):
    import tensorflow as tf

    from keras_cnn.data.images import load_image
    from keras_cnn.models.loading import load_model

    run, _ = scratch_run
    out, result = exported
    metadata = json.loads((out / "1" / "assets.extra" / "kcnn.json").read_text())
    assert metadata["multi_label"] and metadata["output"]["activation"] == "sigmoid"
    assert metadata["thresholds"] == json.loads((run / "thresholds.json").read_text())["thresholds"]
    root, sets = tagged
    names = sorted(sets)[:6]
    encoded = [(root / name).read_bytes() for name in names]
    assert metadata["calibration"]["temperature"] == json.loads((run / "calibration.json").read_text())["temperature"]
    loaded = tf.saved_model.load(str(out / "1"))
    answer = loaded.signatures["serving_default"](image_bytes=tf.constant(encoded))
    pixels = np.stack([load_image(data, (SIDE, SIDE), 1).numpy() for data in encoded]).astype("float32")
    # The calibrated probabilities: the temperature is baked into the export.
    expected = calibrated_probabilities(run, pixels)
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-5)
    assert np.abs(expected - np.asarray(load_model(run / "model.keras")(pixels))).max() > 1e-4   # T != 1
    thresholds = np.array([metadata["thresholds"][label] for label in LABELS], np.float32)
    np.testing.assert_array_equal(answer["above_threshold"].numpy(), expected >= thresholds)
    joined = [";".join(label for label, on in zip(LABELS, row) if on) for row in expected >= thresholds]
    assert [value.decode() for value in answer["labels"].numpy()] == joined
    predicted = invoke_json("predict", "--model", out, *[root / name for name in names])["predictions"]
    assert [";".join(item["label"] for item in row["above_threshold"]) for row in predicted] == joined
    # ONNX and LiteRT return the same calibrated probabilities (from pixels at the model's size).
    import onnxruntime

    from keras_cnn.export.portable import litert_outputs

    session = onnxruntime.InferenceSession(result["files"]["onnx"], providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {session.get_inputs()[0].name: pixels})[0], expected, atol=1e-5)
    np.testing.assert_allclose(litert_outputs(result["files"]["litert"], pixels), expected, atol=1e-5)
    # --tta: each label's calibrated probability averaged over the views, then compared with its threshold.
    with_tta = invoke_json("predict", "--model", out, "--tta", 2, *[root / name for name in names])["predictions"]
    averaged = np.array([row["probabilities"] for row in with_tta])
    assert not np.allclose(averaged, expected, atol=1e-4)
    assert [[item["label"] for item in row["above_threshold"]] for row in with_tta] == \
        [[label for label, on in zip(LABELS, row) if on] for row in averaged >= thresholds]


def test_a_folder_tree_with_shared_files_trains_as_multi_label(tagged, tmp_path):
    root, sets = tagged
    tree = tmp_path / "tree"
    for name, found in list(sets.items())[:80]:
        for label in found:
            (tree / label).mkdir(parents=True, exist_ok=True)
            (tree / label / name).write_bytes((root / name).read_bytes())
    summary = invoke_json("train", "lenet", "--images", tree, "--multi-label", "--epochs", 1, "--out",
                          tmp_path / "run")
    split = pd.read_csv(tmp_path / "run" / "split.csv", dtype=str, keep_default_na=False)
    assert list(split.columns) == ["objectId", "labels", "type", "sha1"]
    with_labels = {name: found for name, found in list(sets.items())[:80] if found}
    assert len(split) == len(with_labels) and summary["multi_label"]
    for object_id, labels in zip(split["objectId"], split["labels"]):
        assert set(labels.split(";")) == with_labels[object_id.split("/", 1)[1]]

    # The copies merged into one image are known to the run's input record, not "added" since;
    # a copy put under another label folder later is.
    from keras_cnn.config import RunConfig
    from keras_cnn.data.input_record import check_inputs

    run = tmp_path / "run"
    data = RunConfig.from_dict(json.loads((run / "config.json").read_text())).data
    merged = json.loads((run / "inputs.json").read_text())["not_used"]
    assert len(merged) == sum(len(found) for found in with_labels.values()) - len(with_labels) > 0
    (tree / "cat").touch()     # a listed folder's stamp changes: the tree is listed again
    assert not check_inputs(run, data).changes
    name = next(name for name, found in with_labels.items() if "cat" not in found)
    (tree / "cat" / name).write_bytes((root / name).read_bytes())
    with pytest.raises(UserError, match=f"1 image added .*cat/{name}"):
        check_inputs(run, data)


def test_binary_is_refused_on_a_split_csv_that_records_multi_label(tagged, split_csv, tmp_path):
    root, _ = tagged
    result = CliRunner().invoke(cli, ["transfer", "--base", "mobilenet_v3_small", "--weights", "none", "--binary",
                                      "--split", str(split_csv), "--images", str(root), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "drop --binary" in result.output, result.output[-2000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_killed_multi_label_run_resumes_into_the_uninterrupted_one(tagged, split_csv, tmp_path, monkeypatch):
    from test_resume_exact import assert_same_run, killed_and_resumed

    root, _ = tagged
    arguments = ["train", "lenet", "--split", str(split_csv), "--images", str(root), "--epochs", "3",
                 "--batch-size", "32"]
    invoke_json(*arguments, "--out", tmp_path / "uninterrupted")
    killed_and_resumed([*arguments, "--out", str(tmp_path / "resumed")], monkeypatch, kills=(1,))
    assert_same_run(tmp_path / "uninterrupted", tmp_path / "resumed", "train")
    for name in ("thresholds.json", "calibration.json"):
        assert json.loads((tmp_path / "resumed" / name).read_text()) == \
            json.loads((tmp_path / "uninterrupted" / name).read_text())


def test_mixup_smoothing_and_balanced_weights_train_on_label_vectors(tagged, split_csv, tmp_path):
    root, _ = tagged
    summary = invoke_json("train", "lenet", "--split", split_csv, "--images", root, "--epochs", 1, "--mixup", 0.2,
                          "--label-smoothing", 0.1, "--class-weight", "balanced", "--out", tmp_path / "run")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["training"]["loss"] == "positive_weighted_binary_crossentropy"
    assert np.isfinite(summary["val_loss"]) and summary["test_macro_map"] is not None


def test_label_smoothing_and_mixup_act_on_multi_hot_vectors():
    import tensorflow as tf

    from keras_cnn.data.regularize import regularize_dataset

    targets = np.array([[1, 0, 1], [0, 1, 0], [0, 0, 0], [1, 1, 1]], np.float32)
    images = np.zeros((4, 8, 8, 1), np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets)).batch(4)
    _, smoothed = next(iter(regularize_dataset(dataset, {"label_smoothing": 0.2}, 3, seed=1, multi_label=True)))
    np.testing.assert_allclose(smoothed.numpy(), targets * 0.8 + 0.1, atol=1e-6)
    _, mixed = next(iter(regularize_dataset(dataset, {"mixup": 0.4}, 3, seed=1, multi_label=True)))
    mixed = mixed.numpy()
    assert mixed.shape == (4, 3) and ((mixed >= 0) & (mixed <= 1)).all()
    assert not np.allclose(mixed, targets)   # pairs were blended, each label on its own


def test_positive_weights_scale_only_the_positive_targets():
    import keras

    from keras_cnn.losses import PositiveWeightedBinaryCrossentropy
    from keras_cnn.train.stage_data import balanced_positive_weights

    assert balanced_positive_weights({0: 10, 1: 40, 2: 0}, 50) == [4.0, 0.25, 1.0]
    targets = np.array([[1, 0], [0, 1], [1, 1]], np.float32)
    outputs = np.array([[0.8, 0.3], [0.4, 0.9], [0.6, 0.2]], np.float32)
    plain = float(keras.losses.BinaryCrossentropy()(targets, outputs))
    assert float(PositiveWeightedBinaryCrossentropy([1.0, 1.0])(targets, outputs)) == pytest.approx(plain, rel=1e-5)
    weighted = -(targets * [3.0, 0.5] * np.log(outputs) + (1 - targets) * np.log(1 - outputs)).mean()
    assert float(PositiveWeightedBinaryCrossentropy([3.0, 0.5])(targets, outputs)) == pytest.approx(weighted, rel=1e-5)
    again = PositiveWeightedBinaryCrossentropy.from_config(PositiveWeightedBinaryCrossentropy([3.0, 0.5]).get_config())
    assert again.positive_weights == [3.0, 0.5]


def test_transfer_and_finetune_train_sigmoid_heads(tagged, split_csv, tmp_path_factory):
    """Stage 1 on cached features of a (tiny TF Hub) base, then fine-tuning of the whole model."""
    from keras_cnn.models.loading import load_model

    root, _ = tagged
    hub = write_hub_module(tmp_path_factory.mktemp("hub") / "tiny")
    run = tmp_path_factory.mktemp("transfer") / "run"
    head = invoke_json("transfer", "--base", f"hub:{hub}", "--image-size", 32, "--split", split_csv, "--images", root,
                       "--epochs", 2, "--out", run)
    config = json.loads((run / "config.json").read_text())
    assert head["multi_label"] and config["data"]["multi_label"] and config["training"]["cache_features"]
    assert json.loads((run / "thresholds.json").read_text())["stage"] == "head"
    tuned = invoke_json("finetune", "--run", run, "--unfreeze-from", "all", "--epochs", 1, "--trust-hub")
    assert tuned["multi_label"] and json.loads((run / "thresholds.json").read_text())["stage"] == "finetune"
    calibration = json.loads((run / "calibration.json").read_text())
    assert calibration["multi_label"] and calibration["stage"] == "finetune"
    assert json.loads((run / "thresholds.json").read_text())["temperature"] == calibration["temperature"]
    output = load_model(run / "model.keras", trust_hub=f"hub:{hub}").layers[-1]
    assert output.units == len(LABELS) and output.activation.__name__ == "sigmoid"


@pytest.mark.slow
def test_finetune_caches_the_frozen_layers_of_a_multi_label_model(tagged, split_csv, tmp_path):
    root, _ = tagged
    run = tmp_path / "transfer"
    invoke_json("transfer", "--base", "mobilenet_v3_small", "--weights", "none", "--image-size", 32, "--split",
                split_csv, "--images", root, "--epochs", 1, "--out", run)
    tuned = invoke_json("finetune", "--run", run, "--epochs", 1)
    config = json.loads((run / "config.json").read_text())
    assert tuned["multi_label"] and config["extra"]["stages"]["finetune"]["frozen_cache"]["used"]


def test_lr_find_sweeps_a_multi_label_stage(tagged, split_csv, tmp_path):
    root, _ = tagged
    result = invoke_json("lr-find", "--architecture", "lenet", "--split", split_csv, "--images", root, "--steps", 20,
                         "--batch-size", 16, "--start-lr", 1e-4, "--end-lr", 1, "--out", tmp_path / "lr.png")
    assert result["steps"] > 0 and (tmp_path / "lr.png").exists()
    # The loss swept is binary cross-entropy over the labels: about log 2 for an untrained sigmoid head
    # (sparse categorical cross-entropy over three classes would start near log 3).
    first = pd.read_csv(tmp_path / "lr.csv")["loss"].iloc[0]
    assert abs(first - np.log(2)) < abs(first - np.log(3)), first
    assert "valley" in result["suggestions"] or result["no_suggestion"]


def test_kcnn_serve_answers_with_the_labels_above_their_thresholds(exported, tagged):
    from starlette.testclient import TestClient

    from keras_cnn.predict import load_exported_model, predict_files
    from keras_cnn.serve.app import ServeOptions, create_app
    from keras_cnn.serve.models import load_repository

    out, _ = exported
    root, sets = tagged
    names = sorted(sets)[:3]
    expected, _ = predict_files(load_exported_model(out), [root / name for name in names])
    app = create_app(load_repository(out, name="model"), ServeOptions())
    with TestClient(app) as client:
        files = [("image", (name, (root / name).read_bytes(), "image/png")) for name in names]
        results = client.post("/kcnn/v1/models/model/classify", files=files).json()["results"]
        assert [result["above_threshold"] for result in results] == [row["above_threshold"] for row in expected]
        description = client.get("/kcnn/v1/models").json()["models"][0]
        assert description["multi_label"] and set(description["thresholds"]) == set(LABELS)
        body = {"instances": [{"b64": base64.b64encode((root / name).read_bytes()).decode()} for name in names]}
        served = client.post("/v1/models/model:predict", json=body).json()["predictions"]
    assert [row["labels"] for row in served] == [";".join(item["label"] for item in row["above_threshold"])
                                                  for row in expected]
    assert all(len(row["above_threshold"]) == len(LABELS) for row in served)


@pytest.mark.slow
def test_int8_litert_export_is_checked_on_map(scratch_run, tmp_path):
    run, _ = scratch_run
    result = invoke_json("export", "--run", run, "--out", tmp_path, "--format", "litert", "--quantize", "int8",
                         "--max-accuracy-drop", 1)
    quantization = result["quantization"]
    assert quantization["metric"] == "macro_map" and quantization["quantized"]["macro_map"] > 0.5
    assert quantization["macro_map_change"] == pytest.approx(quantization["quantized"]["macro_map"]
                                                             - quantization["float"]["macro_map"])


@pytest.mark.slow
def test_two_workers_train_a_multi_label_run(tagged, split_csv, tmp_path):
    """`--strategy multiworker` (the custom loop) with the multi-label loss and metric, two processes."""
    from test_distribute import base_environment, finish, free_ports

    root, _ = tagged
    ports = free_ports(2)
    processes = []
    for index in range(2):
        environment = base_environment()
        environment["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                                               "task": {"type": "worker", "index": index}})
        log = open(tmp_path / f"worker{index}.log", "w")  # noqa: SIM115 - closed by finish()
        process = subprocess.Popen(
            [sys.executable, "-m", "keras_cnn", "train", "lenet", "--split", str(split_csv), "--images", str(root),
             "--epochs", "2", "--batch-size", "16", "--class-weight", "balanced", "--strategy", "multiworker",
             "--out", str(tmp_path / "run"), "--json"],
            env=environment, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
        process.log = log
        processes.append(process)
    finish(processes)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["multi_label"] and metrics["test"]["macro_map"] is not None
    assert (tmp_path / "run" / "thresholds.json").exists()
