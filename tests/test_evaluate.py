"""Evaluation metrics against hand-computed values, and `kcnn evaluate` on a handmade run."""

from __future__ import annotations

import hashlib
import io
import json
import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_cnn import evaluate  # noqa: E402
from keras_cnn.errors import UserError  # noqa: E402

# ----------------------------------------------------------------------------- the hand-made case
# labels (index order): cat, dog, bird.  Ten samples; the prediction is the row's arg-max.
#
#   confusion matrix          precision        recall          F1
#   true\pred cat dog bird
#   cat        2   1   1      cat  2/3         cat  2/4        cat  4/7
#   dog        1   2   0      dog  2/3         dog  2/3        dog  2/3
#   bird       0   0   3      bird 3/4         bird 3/3        bird 6/7
#   column sums 3  3   4      support: 4, 3, 3
LABELS = ["cat", "dog", "bird"]
TRUE = [0, 0, 0, 0, 1, 1, 1, 2, 2, 2]
PROBABILITIES = [
    [0.6, 0.3, 0.1],   # cat  -> cat
    [0.5, 0.2, 0.3],   # cat  -> cat
    [0.3, 0.6, 0.1],   # cat  -> dog   (cat second: a top-2 hit)
    [0.1, 0.2, 0.7],   # cat  -> bird  (cat third: a top-2 miss)
    [0.2, 0.7, 0.1],   # dog  -> dog
    [0.1, 0.8, 0.1],   # dog  -> dog
    [0.5, 0.1, 0.4],   # dog  -> cat   (dog third: a top-2 miss)
    [0.1, 0.1, 0.8],   # bird -> bird
    [0.2, 0.2, 0.6],   # bird -> bird
    [0.3, 0.3, 0.4],   # bird -> bird
]


def close(value, fraction):
    return value == pytest.approx(float(fraction), abs=1e-12)


def test_confusion_matrix_and_per_class_numbers_match_the_hand_computation():
    metrics = evaluate.compute_metrics(TRUE, PROBABILITIES, LABELS, loss=0.5)

    assert metrics["confusion_matrix"] == [[2, 1, 1], [1, 2, 0], [0, 0, 3]]
    assert metrics["num_samples"] == 10 and metrics["num_classes"] == 3 and metrics["labels"] == LABELS
    assert close(metrics["accuracy"], Fraction(7, 10))
    assert metrics["loss"] == 0.5
    expected = {
        "cat": (Fraction(2, 3), Fraction(1, 2), Fraction(4, 7), 4),
        "dog": (Fraction(2, 3), Fraction(2, 3), Fraction(2, 3), 3),
        "bird": (Fraction(3, 4), Fraction(1, 1), Fraction(6, 7), 3),
    }
    assert list(metrics["per_class"]) == LABELS
    for label, (precision, recall, f1, support) in expected.items():
        row = metrics["per_class"][label]
        assert close(row["precision"], precision), label
        assert close(row["recall"], recall), label
        assert close(row["f1"], f1), label
        assert close(row["accuracy"], recall), label
        assert row["support"] == support


def test_macro_and_weighted_averages_match_the_hand_computation():
    metrics = evaluate.compute_metrics(TRUE, PROBABILITIES, LABELS)
    # macro: plain mean over the three classes
    assert close(metrics["macro_precision"], Fraction(25, 36))      # (2/3 + 2/3 + 3/4) / 3
    assert close(metrics["macro_recall"], Fraction(13, 18))         # (1/2 + 2/3 + 1) / 3
    assert close(metrics["macro_f1"], Fraction(44, 63))             # (4/7 + 2/3 + 6/7) / 3
    # weighted by support 4, 3, 3
    assert close(metrics["weighted_precision"], Fraction(83, 120))  # (4*2/3 + 3*2/3 + 3*3/4) / 10
    assert close(metrics["weighted_recall"], Fraction(7, 10))       # = accuracy, always
    assert close(metrics["weighted_f1"], Fraction(24, 35))          # (4*4/7 + 3*2/3 + 3*6/7) / 10
    assert metrics["loss"] is None
    assert "roc_auc" not in metrics


def test_top_k_and_most_confused_pairs():
    metrics = evaluate.compute_metrics(TRUE, PROBABILITIES, LABELS)
    assert close(metrics["top_2_accuracy"], Fraction(8, 10))
    assert "top_3_accuracy" not in metrics and "top_5_accuracy" not in metrics   # k must be < N
    # Three off-diagonal cells of count 1; equal counts keep labels.txt order.
    assert metrics["most_confused"] == [
        {"true": "cat", "predicted": "dog", "count": 1},
        {"true": "cat", "predicted": "bird", "count": 1},
        {"true": "dog", "predicted": "cat", "count": 1},
    ]


def test_top_k_counts_ties_at_the_boundary_as_hits_and_reports_k_below_n():
    # The true class (2) ties with class 1 for second place: a top-2 hit, like tf.math.in_top_k.
    assert evaluate.top_k_accuracy([2, 0], [[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]], 2) == 0.5
    six = np.eye(6)[[5, 4, 3, 2, 1, 0]] * 0.5 + 0.5 / 6
    metrics = evaluate.compute_metrics([0, 1, 2, 3, 4, 5], six, list("abcdef"))
    assert {"top_2_accuracy", "top_3_accuracy", "top_5_accuracy"} <= set(metrics)
    assert metrics["top_5_accuracy"] == 1.0 and metrics["accuracy"] == 0.0
    assert len(metrics["most_confused"]) == 5


def test_binary_roc_auc_by_ranks_with_ties_matches_pair_counting():
    # positives score 0.35, 0.8, 0.4; negatives 0.1, 0.4, 0.4.
    # Pairs won by the positive: 0.35 -> 1 (vs 0.1), 0.8 -> 3, 0.4 -> 1 + two ties (1/2 each) = 2.
    # AUC = (1 + 3 + 2) / 9 = 2/3.
    true = [0, 0, 1, 1, 0, 1]
    positive_probability = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    assert close(evaluate.roc_auc(np.array(true) == 1, positive_probability), Fraction(2, 3))
    # A one-sigmoid model: the caller may pass p alone; it is expanded to [1 - p, p].
    metrics = evaluate.compute_metrics(true, np.array(positive_probability)[:, None], ["no", "yes"])
    assert close(metrics["roc_auc"], Fraction(2, 3))
    assert metrics["confusion_matrix"] == [[3, 0], [2, 1]]   # only 0.8 is above 0.5
    assert "top_2_accuracy" not in metrics
    # Undefined with only one class present.
    assert evaluate.compute_metrics([1, 1], [[0.2, 0.8], [0.6, 0.4]], ["no", "yes"])["roc_auc"] is None


def test_average_ranks_share_ties():
    assert evaluate.average_ranks([3.0, 1.0, 3.0, 2.0, 3.0]).tolist() == [4.0, 1.0, 4.0, 2.0, 4.0]


def test_undefined_ratios_are_zero_and_per_class_accuracy_is_recall():
    # "c" is never predicted (precision 0/0) and has no samples (recall 0/0).
    metrics = evaluate.compute_metrics([0, 1, 1], [[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0]],
                                       ["a", "b", "c"])
    assert metrics["per_class"]["c"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "accuracy": 0.0,
    }
    json.dumps(metrics, allow_nan=False)
    accuracy = evaluate.per_class_accuracy([0, 0, 1, 2], [0, 1, 1, 1], ["x", "y", "z"])
    assert accuracy == {"x": 0.5, "y": 1.0, "z": 0.0}


def test_bad_inputs_name_the_received_values():
    with pytest.raises(ValueError, match=r"shape \(n, 3\).*\(2, 2\)"):
        evaluate.compute_metrics([0, 1], [[0.5, 0.5], [0.5, 0.5]], LABELS)
    with pytest.raises(ValueError, match="0..2.*7"):
        evaluate.compute_metrics([0, 7], [[1, 0, 0], [0, 1, 0]], LABELS)
    with pytest.raises(ValueError, match="2 vs 1"):
        evaluate.compute_metrics([0, 1], [[1, 0, 0]], LABELS)


def test_outputs_to_probabilities_and_cross_entropy():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    probabilities = evaluate.outputs_to_probabilities(logits, 3, from_logits=True)
    assert np.allclose(probabilities.sum(axis=1), 1.0) and np.allclose(probabilities[1], 1 / 3)
    expected = -np.mean(np.log([probabilities[0, 0], probabilities[1, 2]]))
    assert evaluate.cross_entropy(logits, [0, 2], from_logits=True) == pytest.approx(expected, rel=1e-5)
    sigmoid = evaluate.outputs_to_probabilities(np.array([[0.25], [0.9]]), 2)
    assert sigmoid.tolist() == [[0.75, 0.25], [pytest.approx(0.1), 0.9]]
    expected = -np.mean(np.log([0.75, 0.9]))
    assert evaluate.cross_entropy([[0.25], [0.9]], [0, 1]) == pytest.approx(expected, rel=1e-5)


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


EVAL_FILES = ("metrics.json", "predictions.csv", "confusion_matrix.png", "training.png",
              "misclassified.png", "report.html")


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
    assert page.count("data:image/png;base64,") == 3


def test_validation_evaluation_goes_beside_the_test_report(tmp_path, monkeypatch):
    run_root = make_run(tmp_path)
    _stub_load_subset(monkeypatch, run_root)
    evaluate.evaluate_run(run_root)
    test_report = (run_root / "eval" / "report.html").read_text()
    summary = evaluate.evaluate_run(run_root, subset="validation")
    assert summary["output_dir"] == str(run_root / "eval" / "validation")
    assert json.loads((run_root / "eval" / "validation" / "metrics.json").read_text())["subset"] == "validation"
    assert json.loads((run_root / "eval" / "metrics.json").read_text())["subset"] == "test"
    assert (run_root / "eval" / "report.html").read_text() == test_report


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
    assert batches[0].shape == (2, 12, 12, 3) and batches[0].dtype.name == "float32"

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
