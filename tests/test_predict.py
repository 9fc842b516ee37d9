"""``kcnn predict``: predictions from an exported SavedModel, bad files, bad model folders."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from PIL import Image  # noqa: E402

from keras_cnn.cli import cli  # noqa: E402
from keras_cnn.config import DataConfig, ModelConfig, RunConfig  # noqa: E402
from keras_cnn.errors import UserError  # noqa: E402
from keras_cnn.export import export_run  # noqa: E402
from keras_cnn.export_layout import resolve_version_dir  # noqa: E402
from keras_cnn.predict import load_exported_model, predict_files  # noqa: E402
from keras_cnn.runs import RunDirectory  # noqa: E402

LABELS = ["apple", "banana", "cherry"]


def encoded(seed, size, fmt="PNG", mode="RGB"):
    pixels = np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    """A tiny 3-class model, trained by nobody, exported to EXPORT/1."""
    root = tmp_path_factory.mktemp("predict")
    run = RunDirectory(root / "run").create()
    keras.utils.set_random_seed(5)
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x)).save(run.model_path)
    run.write_labels(LABELS)
    run.write_config(RunConfig("train", ModelConfig(name="tiny"), DataConfig(image_size=(24, 24), channels=3)).to_dict())
    export_run(run.root, root / "export", verify=False)
    shutil.rmtree(run.root)  # predict must work without the run
    return root / "export"


@pytest.fixture
def images(tmp_path):
    """good/: three images (one nested), bad/: a text file named .jpg, a truncated JPEG, an empty PNG."""
    good = tmp_path / "good"
    (good / "nested").mkdir(parents=True)
    (good / "one.png").write_bytes(encoded(1, (30, 40)))
    (good / "two.jpg").write_bytes(encoded(2, (24, 24), "JPEG"))
    (good / "nested" / "three.bmp").write_bytes(encoded(3, (17, 50), "BMP", "L"))
    (good / "notes.txt").write_text("not an image, and not an image extension: skipped")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "text.jpg").write_text("hello, I am not a JPEG")
    jpeg = encoded(4, (64, 64), "JPEG")
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "empty.png").write_bytes(b"")
    return tmp_path


def invoke(*arguments):
    return CliRunner().invoke(cli, ["predict", *map(str, arguments)])


def test_predict_files_expands_directories_and_ranks_top_k(export_dir, images):
    model = load_exported_model(export_dir)
    assert model.path == export_dir / "1" and model.labels == LABELS
    results, failures = predict_files(model, [images / "good"], batch_size=2, top_k=2)
    assert failures == []
    assert [Path(result["path"]).name for result in results] == ["three.bmp", "one.png", "two.jpg"]  # sorted paths
    for result in results:
        probabilities = np.array(result["probabilities"])
        assert probabilities.shape == (3,) and abs(probabilities.sum() - 1) < 1e-5
        assert result["class_index"] == int(probabilities.argmax())
        assert result["label"] == LABELS[result["class_index"]]
        assert result["probability"] == pytest.approx(probabilities.max())
        assert [item["class_index"] for item in result["top_k"]] == list(np.argsort(-probabilities)[:2])
        assert result["top_k"][0]["label"] == result["label"]
    # Batch size does not change the answer.
    one_by_one, _ = predict_files(model, [images / "good"], batch_size=1)
    np.testing.assert_allclose([r["probabilities"] for r in one_by_one], [r["probabilities"] for r in results],
                               atol=1e-6)


def test_cli_table(export_dir, images):
    result = invoke("--model", export_dir, images / "good" / "one.png", images / "good" / "two.jpg")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split() == ["file", "label", "confidence"]
    assert len(lines) == 3 and lines[1].startswith(str(images / "good" / "one.png"))
    assert lines[1].split()[1] in LABELS and 0 < float(lines[1].split()[2]) <= 1

    with_top_k = invoke("--model", export_dir / "1", "--top-k", "3", images / "good" / "one.png")
    assert with_top_k.exit_code == 0 and "top-3" in with_top_k.stdout
    assert all(label in with_top_k.stdout.splitlines()[1] for label in LABELS)


def test_cli_json_is_one_object_in_labels_order(export_dir, images):
    result = invoke("--model", export_dir, "--json", "--top-k", "2", images / "good")
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert set(payload) == {"predictions", "failures"} and payload["failures"] == []
    predictions = payload["predictions"]
    assert isinstance(predictions, list) and len(predictions) == 3
    for prediction in predictions:
        assert {"path", "label", "class_index", "probability", "probabilities"} <= set(prediction)
        assert prediction["label"] == LABELS[int(np.argmax(prediction["probabilities"]))]
        assert len(prediction["top_k"]) == 2


def test_bad_files_are_listed_and_good_ones_still_predicted(export_dir, images):
    result = invoke("--model", export_dir, "--json", "--batch-size", "8", images / "good", images / "bad",
                    images / "missing.png")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    predicted = [Path(prediction["path"]).name for prediction in payload["predictions"]]
    assert sorted(predicted) == ["one.png", "three.bmp", "two.jpg"]
    assert sorted(Path(failure["path"]).name for failure in payload["failures"]) == [
        "empty.png", "missing.png", "text.jpg", "truncated.jpg"]
    errors = [line for line in result.stderr.splitlines() if line.startswith("kcnn:")]
    reasons = {Path(line.split("cannot predict ")[1].split(":")[0]).name: line for line in errors if "cannot predict" in line}
    assert set(reasons) == {"text.jpg", "truncated.jpg", "empty.png", "missing.png"}
    assert "Unknown image file format" in reasons["text.jpg"]
    assert "not a readable image" in reasons["truncated.jpg"]
    assert "empty file" in reasons["empty.png"] and "no such file" in reasons["missing.png"]
    assert "4 of 7 input(s) failed" in result.stderr


def test_nothing_readable_exits_2(export_dir, images):
    result = invoke("--model", export_dir, images / "bad" / "text.jpg", images / "bad" / "truncated.jpg")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "none of the 2 input(s) could be classified" in result.stderr


@pytest.mark.parametrize("make_model_dir, message", [
    (lambda root: root / "absent", "does not exist"),
    (lambda root: root, "is not an exported model"),
    (lambda root: Path(shutil.copy(__file__, root / "file.py")), "received a file"),
])
def test_bad_model_directory_is_one_line_exit_2(tmp_path, images, make_model_dir, message):
    result = invoke("--model", make_model_dir(tmp_path), images / "good" / "one.png")
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr


def test_broken_saved_model_is_a_user_error(tmp_path):
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"not a protobuf")
    with pytest.raises(UserError, match="cannot load the SavedModel"):
        load_exported_model(tmp_path)


def test_saved_model_that_is_not_a_kcnn_export_is_a_user_error(tmp_path):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(inputs)))
    model.export(str(tmp_path / "1"), verbose=False)  # plain Keras export: float input, no labels
    with pytest.raises(UserError, match="must take 'image_bytes'"):
        load_exported_model(tmp_path)


def test_highest_version_is_used(export_dir, tmp_path):
    shutil.copytree(export_dir, tmp_path / "export")
    shutil.copytree(tmp_path / "export" / "1", tmp_path / "export" / "10")
    (tmp_path / "export" / "9").mkdir()        # not a SavedModel: ignored
    (tmp_path / "export" / "latest").mkdir()   # not a number: ignored
    assert resolve_version_dir(tmp_path / "export") == tmp_path / "export" / "10"
    assert resolve_version_dir(tmp_path / "export" / "1") == tmp_path / "export" / "1"


PLAIN_PREDICT_SCRIPT = r"""
import json, sys
from keras_cnn.predict import load_exported_model, predict_files
results, failures = predict_files(load_exported_model(sys.argv[1]), sys.argv[2:])
print(json.dumps({"labels": [r["label"] for r in results], "failures": len(failures),
                  "modules": sorted(m for m in sys.modules if m.split(".")[0] == "keras_cnn")}))
"""


def test_predict_needs_no_training_code(export_dir, images):
    completed = subprocess.run(
        [sys.executable, "-c", PLAIN_PREDICT_SCRIPT, str(export_dir), str(images / "good"), str(images / "bad")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    answer = json.loads(completed.stdout.strip().splitlines()[-1])
    assert len(answer["labels"]) == 3 and answer["failures"] == 3
    assert answer["modules"] == ["keras_cnn", "keras_cnn.data", "keras_cnn.data.pixel_limit",   # the header check
                                 "keras_cnn.errors", "keras_cnn.export_layout", "keras_cnn.heatmaps", "keras_cnn.io",
                                 "keras_cnn.label_lists", "keras_cnn.messages", "keras_cnn.predict"]


def test_missing_labels_file_is_one_line_naming_it_and_both_counts(export_dir, images, tmp_path):
    shutil.copytree(export_dir, tmp_path / "export")
    labels_file = tmp_path / "export" / "1" / "assets" / "labels.txt"
    labels_file.unlink()
    result = invoke("--model", tmp_path / "export", images / "good" / "one.png")
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0
    assert str(labels_file) in result.stderr and "0 labels, 3 expected" in result.stderr


def test_short_labels_file_is_one_line_and_top_k_is_clipped_to_the_classes(export_dir, images, tmp_path):
    shutil.copytree(export_dir, tmp_path / "export")
    labels_file = tmp_path / "export" / "1" / "assets" / "labels.txt"
    result = invoke("--model", tmp_path / "export", "--top-k", "7", "--json", images / "good" / "one.png")
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)["predictions"][0]["top_k"]) == 3
    table = invoke("--model", tmp_path / "export", "--top-k", "7", images / "good" / "one.png")
    assert table.exit_code == 0 and "top-3" in table.stdout

    labels_file.write_text("apple\nbanana\n")
    result = invoke("--model", tmp_path / "export", "--top-k", "2", images / "good" / "one.png")
    assert result.exit_code == 2 and result.stderr.strip().count("\n") == 0
    assert f"{labels_file.parent.parent}: assets/labels.txt and assets.extra/kcnn.json disagree" in result.stderr
    assert "labels.txt has 2 labels, assets.extra/kcnn.json 3" in result.stderr


CHECK_BEFORE_TENSORFLOW = r"""
import sys
from keras_cnn.cli import cli
try:
    cli.main(["predict", "--model", sys.argv[1], "image.jpg"], prog_name="kcnn")
except SystemExit as stop:
    print(stop.code, "tensorflow" in sys.modules)
"""


def test_predict_checks_the_model_folder_before_importing_tensorflow(tmp_path):
    completed = subprocess.run([sys.executable, "-c", CHECK_BEFORE_TENSORFLOW, str(tmp_path / "missing")],
                               capture_output=True, text=True, timeout=120)
    assert completed.stdout.split() == ["2", "False"], completed.stderr[-2000:]
    assert "does not exist" in completed.stderr


def test_cli_tta_averages_views(export_dir, images):
    plain = invoke("--model", export_dir, images / "good" / "one.png", "--json")
    averaged = invoke("--model", export_dir, images / "good" / "one.png", "--tta", "2", "--json")
    assert plain.exit_code == 0 and averaged.exit_code == 0, averaged.output
    plain_row = json.loads(plain.stdout)["predictions"][0]
    tta_row = json.loads(averaged.stdout)["predictions"][0]
    assert np.allclose(sum(tta_row["probabilities"]), 1.0, atol=1e-5)
    assert not np.allclose(plain_row["probabilities"], tta_row["probabilities"], atol=1e-6)
    too_many = invoke("--model", export_dir, images / "good" / "one.png", "--tta", "9")
    assert too_many.exit_code == 2 and "between 1 and 6 views" in too_many.stderr
