"""Evaluation pictures and the self-contained HTML report."""

from __future__ import annotations

import base64
import html.parser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from keras_cnn import report
from keras_cnn.evaluate import compute_metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 2000, path
    assert not [item.name for item in Path(path).parent.iterdir() if ".tmp-" in item.name]


TWO_STAGES = [
    {"stage": "head", "epoch": 1, "loss": 1.2, "accuracy": 0.40, "val_loss": 1.3, "val_accuracy": 0.35},
    {"stage": "head", "epoch": 2, "loss": 0.9, "accuracy": 0.55, "val_loss": 1.0, "val_accuracy": 0.50},
    {"stage": "finetune", "epoch": 3, "loss": 0.6, "accuracy": 0.70, "val_loss": 0.8, "val_accuracy": 0.62},
    {"stage": "finetune", "epoch": 4, "loss": 0.5, "accuracy": 0.78, "val_loss": 0.75, "val_accuracy": 0.66},
]


def test_training_history_from_csv_rows_and_frames(tmp_path):
    csv_path = tmp_path / "history.csv"
    pd.DataFrame(TWO_STAGES).to_csv(csv_path, index=False)
    assert_png(report.plot_training_history(csv_path, tmp_path / "from_csv.png"))
    # One stage without validation columns, given as rows.
    rows = [{"stage": "train", "epoch": epoch, "loss": 1.0 / epoch, "accuracy": 0.1 * epoch}
            for epoch in (1, 2, 3)]
    assert_png(report.plot_training_history(rows, tmp_path / "single.png"))
    # No stage and no accuracy column, as a DataFrame.
    assert_png(report.plot_training_history(pd.DataFrame({"loss": [0.5, 0.4]}), tmp_path / "loss_only.png"))
    # An empty history still gives a picture that says so.
    (tmp_path / "empty.csv").write_text("")
    assert_png(report.plot_training_history(tmp_path / "empty.csv", tmp_path / "empty.png"))


def test_stage_boundaries():
    assert report._stage_boundaries(["head", "head", "finetune", "finetune"]) == [(2, "finetune")]
    assert report._stage_boundaries(["train"] * 3) == []


def test_confusion_matrix_picture_for_few_and_many_classes(tmp_path):
    assert_png(report.plot_confusion_matrix([[2, 1, 1], [1, 2, 0], [0, 0, 3]], ["cat", "dog", "bird"],
                                            tmp_path / "three.png"))
    generator = np.random.default_rng(1)
    matrix = generator.integers(0, 30, (20, 20)) + np.eye(20, dtype=int) * 200
    matrix[5] = 0   # a class with no samples: its normalised row stays 0
    labels = [f"class_with_a_long_name_{index}" for index in range(20)]
    assert_png(report.plot_confusion_matrix(matrix, labels, tmp_path / "twenty.png"))
    with pytest.raises(ValueError, match=r"3x3.*\(2, 2\)"):
        report.plot_confusion_matrix([[1, 0], [0, 1]], ["a", "b", "c"], tmp_path / "bad.png")
    assert report.row_normalised([[1, 3], [0, 0]]).tolist() == [[0.25, 0.75], [0.0, 0.0]]


def test_misclassified_grid_grey_rgb_and_no_mistakes(tmp_path):
    generator = np.random.default_rng(2)
    rgb = generator.integers(0, 256, (7, 24, 24, 3)).astype(np.float32)
    true = [0, 1, 2, 0, 1, 2, 0]
    predicted = [1, 1, 0, 2, 0, 2, 2]
    confidences = [0.9, 0.99, 0.6, 0.7, 0.8, 0.95, 0.55]
    labels = ["airplane", "<b>&", "cat"]
    assert_png(report.plot_misclassified(rgb, true, predicted, confidences, labels, tmp_path / "rgb.png",
                                         object_ids=[f"{index:040x}.png" for index in range(7)]))
    grey = generator.integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    assert_png(report.plot_misclassified(grey, true, predicted, confidences, labels, tmp_path / "grey.png",
                                         max_images=2))
    assert_png(report.plot_misclassified(grey[:, :, :, 0], true, true, confidences, labels,
                                         tmp_path / "none.png"))
    assert_png(report.plot_misclassified([], [], [], [], labels, tmp_path / "empty.png"))


class ReferenceCollector(html.parser.HTMLParser):
    """Every src= and href= on a page, and its visible text."""

    def __init__(self):
        super().__init__()
        self.references: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attributes):
        self.references += [value for name, value in attributes if name in ("src", "href")]

    def handle_data(self, data):
        self.text.append(data)


LABELS = ["<b>&", "cat", "dog"]


def _metrics():
    probabilities = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1],
                              [0.1, 0.1, 0.8], [0.1, 0.5, 0.4]])
    metrics = compute_metrics([0, 1, 1, 2, 2], probabilities, LABELS, loss=0.61)
    return {"run": "runs/a", "subset": "test", **metrics}


def test_html_report_is_self_contained_escaped_and_names_only_existing_files(tmp_path):
    run_dir = tmp_path / "run"
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True)
    matrix_png = report.plot_confusion_matrix(_metrics()["confusion_matrix"], LABELS,
                                              eval_dir / "confusion_matrix.png")
    (eval_dir / "predictions.csv").write_text("objectId,true\n")
    config = {"command": "train", "model": {"name": "lenet <script>"}, "labels": LABELS}

    page_path = report.write_html_report(
        run_dir, _metrics(), config,
        # The second picture does not exist: it must not be mentioned.
        {"Confusion matrix": matrix_png, "Training history": eval_dir / "training.png"},
        eval_dir / "report.html",
        links={"predictions.csv": eval_dir / "predictions.csv", "metrics.json": eval_dir / "metrics.json"},
    )
    page = page_path.read_text(encoding="utf-8")
    collector = ReferenceCollector()
    collector.feed(page)

    for reference in collector.references:
        if reference.startswith("data:image/png;base64,"):
            assert base64.b64decode(reference.split(",", 1)[1]).startswith(PNG_SIGNATURE)
        else:
            assert (page_path.parent / reference).is_file(), reference
    assert sum(reference.startswith("data:") for reference in collector.references) == 1
    assert "predictions.csv" in collector.references and "metrics.json" not in collector.references
    assert "training.png" not in page

    # Labels and config text are escaped: no raw tag, and the parsed text shows them as written.
    assert "<b>&" not in page and "<script>" not in page
    assert "&lt;b&gt;&amp;" in page
    visible = "".join(collector.text)
    assert "<b>&" in visible and "lenet <script>" in visible
    for heading in ("Summary", "Per class", "Confusion matrix", "Most confused pairs", "Run configuration"):
        assert heading in visible
    assert "0.6100" in visible   # the loss in the summary table


def test_html_report_accepts_a_list_of_pictures_and_no_mistakes(tmp_path):
    picture = report.plot_misclassified([], [], [], [], ["a", "b"], tmp_path / "misclassified.png")
    metrics = compute_metrics([0, 1], [[0.9, 0.1], [0.2, 0.8]], ["a", "b"])
    page = report.write_html_report(tmp_path, metrics, {}, [picture, tmp_path / "nope.png"],
                                    tmp_path / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "nope" not in page
    assert "No mistakes." in page and "ROC AUC" in page
