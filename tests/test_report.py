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


# --------------------------------------------------------------------------- what a first reader sees

# The demo offline: a frozen EfficientNet-B0 with random weights, 21 test images, every one called 'square'.
DEMO_CONFIG = {"command": "transfer", "model": {"kind": "transfer", "name": "efficientnet_b0", "weights": "none"},
               "extra": {"stages": {"finetune": {"unfreeze_from": "block7a"}}}}
DEMO_LABELS = ["circle", "square", "triangle"]


def _demo_metrics():
    true = np.repeat([0, 1, 2], 7)
    probabilities = np.tile([0.333, 0.334, 0.333], (21, 1))
    return {"run": "kcnn-demo/run", "subset": "test", **compute_metrics(true, probabilities, DEMO_LABELS, loss=1.0986)}


def visible_text(page: str) -> str:
    collector = ReferenceCollector()
    collector.feed(page)
    return " ".join(" ".join(collector.text).split())


def test_the_report_says_first_why_its_numbers_mean_little(tmp_path):
    page = report.write_html_report(tmp_path, _demo_metrics(), DEMO_CONFIG, {}, tmp_path / "report.html").read_text()
    text = visible_text(page)
    opening = text[:text.index("Run directory")]   # what comes before anything else on the page
    assert "Accuracy 0.3333 on 21 test images of 3 labels" in opening
    assert "efficientnet_b0, has random weights (--weights none" in opening and "near chance is expected" in opening
    assert "Every test image was predicted as 'square'" in opening
    assert "The test part is small: 21 images, 7 of the rarest label" in opening and "4.8 points" in opening
    # The same notes are what `kcnn evaluate` prints: each fits on one line.
    assert all(len(f"  note: {note}") <= 300 for note in report.reading_notes(_demo_metrics(), DEMO_CONFIG))
    # So they do with a TF Hub handle for a base and long class names, one answered always, five never present.
    long_labels = [f"a rather long class name number {index} of the set" for index in range(7)]
    matrix = np.zeros((7, 7), dtype=int)
    matrix[:2, 0] = 5
    hub = {"model": {"kind": "transfer", "weights": "none",
                     "name": "hub:https://www.kaggle.com/models/google/efficientnet-v2/tensorFlow2/imagenet21k-b0"}}
    notes = report.reading_notes({"labels": long_labels, "confusion_matrix": matrix.tolist()}, hub)
    assert len(notes) == 4 and all(len(f"  note: {note}") <= 300 for note in notes), [len(note) for note in notes]


def test_reading_notes_stay_silent_for_a_good_model_and_name_what_is_wrong_otherwise():
    generator = np.random.default_rng(0)
    true = np.repeat([0, 1, 2], 40)
    good = np.full((120, 3), 0.05)
    good[np.arange(120), true] = 0.9
    good[:6] = good[:6][:, ::-1]   # a few mistakes
    pretrained = {"model": {"kind": "transfer", "name": "efficientnet_b0", "weights": "imagenet"}}
    metrics = {"subset": "test", **compute_metrics(true, good, DEMO_LABELS)}
    assert report.reading_notes(metrics, pretrained) == []

    # Near chance without answering one label; a label with no test images; all trained from random weights.
    guessing = generator.dirichlet(np.ones(4), size=120)
    four_labels = DEMO_LABELS + ["star"]
    metrics = {"subset": "validation", **compute_metrics(true, guessing, four_labels)}
    unfrozen = {"model": {"kind": "transfer", "name": "resnet50", "weights": "none"},
                "extra": {"stages": {"finetune": {"unfreeze_from": "all"}}}}
    notes = report.reading_notes(metrics, unfrozen)
    assert "started from random weights" in notes[0] and "every layer was trained" in notes[0]
    assert any(note.startswith("Accuracy") and "not clearly above chance" in note and "'circle', the most common"
               not in note for note in notes)
    assert any("No validation images of star" in note for note in notes)
    assert not any("predicted as" in note or "is small" in note for note in notes)


def test_the_loss_plot_has_no_offset_and_its_stage_names_stay_off_the_curves():
    """The demo's history: a loss flat at ln 3 to the fourth decimal, a head stage then a fine-tuning one."""
    rows = [{"stage": "head" if epoch <= 8 else "finetune", "epoch": epoch, "loss": 1.0987 - 1e-5 * epoch,
             "val_loss": 1.0986 - 1e-6 * epoch, "accuracy": 0.29 + 0.005 * (epoch % 3), "val_accuracy": 0.3333}
            for epoch in range(1, 12)]
    figure = report.training_history_figure(rows)
    try:
        figure.canvas.draw()
        loss_axis, accuracy_axis = figure.axes[:2]
        for axis in (loss_axis, accuracy_axis):
            assert axis.yaxis.get_offset_text().get_text() == ""        # no "+1.098" above the axis
            assert [text.get_text() for text in axis.texts] == []       # nothing written over the curves
        # A flat loss looks flat: the axis starts at 0; accuracy spans 0..1.
        assert loss_axis.get_ylim()[0] == 0 and loss_axis.get_ylim()[1] == pytest.approx(1.0987 * 1.08, rel=1e-3)
        assert accuracy_axis.get_ylim() == (0, 1.02)
        # The stages are named on an axis above the plot; the legend sits below both panels.
        stage_names = [label.get_text() for axis in (loss_axis, accuracy_axis) for top in axis.child_axes
                       for label in top.get_xticklabels()]
        assert stage_names == ["head", "finetune", "head", "finetune"]
        legend = figure.legends[0].get_window_extent()
        assert all(not legend.overlaps(axis.get_window_extent()) for axis in (loss_axis, accuracy_axis))
    finally:
        report._pyplot().close(figure)


def test_a_flat_learning_rate_sweep_is_drawn_flat():
    rates = np.geomspace(1e-7, 10, 100)
    losses = np.log(4) + np.random.default_rng(1).normal(scale=1e-4, size=100)
    figure = report.learning_rate_sweep_figure(rates, losses, losses, {}, no_suggestion=True)
    try:
        figure.canvas.draw()
        axis = figure.axes[0]
        bottom, top = axis.get_ylim()
        assert axis.yaxis.get_offset_text().get_text() == ""
        assert top - bottom >= 0.1 * np.log(4) * 0.99    # noise of 1e-4 does not fill the plot
        assert axis.get_title().endswith("no rate suggested")
    finally:
        report._pyplot().close(figure)


def _boxes_apart(texts) -> bool:
    """No two of the (drawn) texts' boxes overlap."""
    boxes = [text.get_window_extent() for text in texts if text.get_visible() and text.get_text()]
    return not any(first.overlaps(second) for index, first in enumerate(boxes) for second in boxes[index + 1:])


def test_confusion_matrix_labels_do_not_collide_and_counts_have_whole_steps():
    """Four photo labels that run together upright, as crops of the scikit-learn sample photos are named."""
    labels = ["cat chelsea", "coffee cup", "china palace", "flower"]
    matrix = [[5, 1, 0, 0], [0, 4, 2, 0], [1, 0, 3, 1], [0, 0, 0, 6]]
    figure = report.confusion_matrix_figure(matrix, labels)
    try:
        figure.canvas.draw()
        count_axis, fraction_axis, count_bar = figure.axes[0], figure.axes[1], figure.axes[2]
        for axis in (count_axis, fraction_axis):
            shown = axis.get_xticklabels()
            assert [label.get_text() for label in shown] == labels
            assert _boxes_apart(shown) or all(label.get_rotation() in (45, 90) for label in shown)
            assert _boxes_apart(axis.get_yticklabels())
        ticks = [tick for tick in count_bar.get_yticks() if 0 <= tick <= 6]
        assert ticks and all(float(tick).is_integer() for tick in ticks)   # no 0.5 steps for counts
    finally:
        report._pyplot().close(figure)
    # Many classes (too many for numbers in the cells): slanted or vertical, never overlapping, still readable.
    many = [f"class_with_a_long_name_{index}" for index in range(report.ANNOTATE_CELLS_UP_TO + 1)]
    figure = report.confusion_matrix_figure(np.eye(len(many), dtype=int) * 3, many)
    try:
        figure.canvas.draw()
        labels_shown = figure.axes[0].get_xticklabels()
        assert all(label.get_rotation() in (45, 90) for label in labels_shown)
        assert labels_shown[0].get_fontsize() >= 8
    finally:
        report._pyplot().close(figure)


def test_mistake_captions_keep_the_whole_file_name_and_the_page_lists_them(tmp_path):
    names = ["cat/chelsea (cropped 94px).jpg", "coffee cup/coffee (cropped 128px at 300,200).jpg",
             "b4cc03f53c5e8a8a0e5a1b2c3d4e5f60718293a4.png"]
    images = np.random.default_rng(2).integers(0, 256, (3, 24, 24, 3))
    figure = report.misclassified_figure(images, [0, 1, 0], [1, 0, 1], [0.9, 0.8, 0.7], ["cat", "coffee cup"],
                                         object_ids=names)
    try:
        figure.canvas.draw()
        titles = [axis.title for axis in figure.axes if axis.title.get_text()]
        for number, (title, name) in enumerate(zip(titles, names), start=1):
            first_lines = title.get_text().split("\ntrue:")[0]
            # Wrapped whole: at most a space became a line break.
            assert first_lines.startswith(f"{number}. ") and "…" not in first_lines
            assert "".join(first_lines[3:].split()) == "".join(name.split())
        assert _boxes_apart(titles)
    finally:
        report._pyplot().close(figure)
    mistakes = [{"file": name, "true": "cat", "predicted": "coffee cup", "confidence": 0.9} for name in names]
    page = report.write_html_report(tmp_path, _demo_metrics(), {}, {}, tmp_path / "report.html",
                                    mistakes=mistakes).read_text()
    text = visible_text(page)
    assert "Most confident mistakes" in text and all(name in text for name in names)
