"""``kcnn evaluate`` on a multi-label run: mAP, F1 at the stored thresholds, the per-label table and pictures.

Each image's labels are predicted at the run's thresholds (``RUN/thresholds.json``, chosen
on the validation part when training ended) from the run's calibrated probabilities (its
temperature, ``RUN/calibration.json``, divides every label's logit; the model's own
probabilities when it has none).  Written into the evaluation folder (each file
atomically): metrics.json (:func:`keras_cnn.metrics.compute_multi_label_metrics`: ``macro_map``,
``micro_map``, ``macro_f1``, ``micro_f1``, ``exact_match``, ``hamming_loss``, ``per_label`` ...),
predictions.csv (objectId, true and predicted labels joined by ``;``, one probability column
per label), reliability.png (every (image, label) pair as one yes/no decision, before and after
the temperature), precision_recall.png, label_mistakes.png (example images of the labels most
often missed or added), training.png and report.html.  With test-time augmentation each label's
probability is averaged over the views and the TTA metrics go under ``"tta"``.
"""

from __future__ import annotations

import heapq
from pathlib import Path
from typing import Any

import numpy as np

from keras_cnn.calibration import SIGMOID, apply_temperature
from keras_cnn.config import RunConfig
from keras_cnn.errors import RunFailure, UserError
from keras_cnn.io import atomic_write_json, atomic_write_text, check_output_path
from keras_cnn.metrics import (binary_cross_entropy, compute_multi_label_metrics, label_decisions,
                               multi_label_predictions, reliability_bins)
from keras_cnn.progress import ProgressBar
from keras_cnn.run_calibration import LabelPredictions, batch_outputs_and_logits, part_block, run_temperature
from keras_cnn.run_data import load_part
from keras_cnn.runs import RunDirectory
from keras_cnn.spreadsheet import frame_csv_text
from keras_cnn.thresholds import read_thresholds

EXAMPLES_PER_LABEL = 4
RESERVED_COLUMNS = ("objectId", "true", "predicted")
SUMMARY = ("macro_map", "micro_map", "macro_f1", "micro_f1", "exact_match", "hamming_loss", "loss")


class LabelMistakeExamples:
    """Per label, the images where it was most clearly missed and most clearly added (a few each).

    "Clearly" = how far the probability lies on the wrong side of the label's threshold.
    Predictions stream batch by batch; only ``capacity`` images per label and kind are kept.
    """

    def __init__(self, thresholds: np.ndarray, capacity: int = EXAMPLES_PER_LABEL):
        self.thresholds = thresholds
        self.capacity = capacity
        self._heaps: dict[tuple[str, int], list] = {}

    def add_batch(self, start: int, images: np.ndarray, targets: np.ndarray, probabilities: np.ndarray) -> None:
        predicted = multi_label_predictions(probabilities, self.thresholds)
        truth = targets > 0.5
        for kind, wrong, margin in (("missed", truth & ~predicted, self.thresholds - probabilities),
                                    ("added", ~truth & predicted, probabilities - self.thresholds)):
            for row, label in zip(*np.nonzero(wrong)):
                heap = self._heaps.setdefault((kind, int(label)), [])
                item = (float(margin[row, label]), -(start + int(row)), images[row], float(probabilities[row, label]))
                if len(heap) < self.capacity:
                    heapq.heappush(heap, item)
                elif item[:2] > heap[0][:2]:
                    heapq.heapreplace(heap, item)

    def rows(self, metrics: dict[str, Any], labels: list[str], object_ids: list[str]) -> list[tuple]:
        """``(title, images, captions)`` for the labels metrics.json lists as most missed, then most added."""
        rows = []
        for kind, key in (("missed", "most_missed"), ("added", "most_added")):
            for item in metrics.get(key, []):
                index = labels.index(item["label"])
                found = sorted(self._heaps.get((kind, index), []), key=lambda entry: (-entry[0], -entry[1]))
                captions = [f"{Path(object_ids[-negated]).name[:18]}\np {probability:.2f} "
                            f"(t {self.thresholds[index]:.2f})" for _margin, negated, _image, probability in found]
                rows.append((f"{kind}: {item['label']} ({item['count']})", [entry[2] for entry in found], captions))
        return rows


def predict_multi_label(opened, part, thresholds: np.ndarray, temperature: float | None = None,
                        views: list[str] | None = None):
    """One pass of the opened model (:mod:`keras_cnn.models.opened`) over a multi-label part, in file order:
    (:class:`keras_cnn.run_calibration.LabelPredictions`, the probabilities at ``temperature``, the
    TTA probabilities or None, examples).  With ``views`` each label's calibrated probability is
    averaged over the views."""
    from keras_cnn.tta import tta_views

    examples = LabelMistakeExamples(thresholds)
    targets = np.asarray(part.targets, dtype=np.float64)
    outputs, logits, averaged = [], [], []
    position = 0
    with ProgressBar(len(targets), f"predicting {len(targets)} images") as progress:
        for batch in part.images():
            batch_outputs, batch_logits = batch_outputs_and_logits(opened, batch)
            outputs.append(batch_outputs)
            logits.append(batch_logits)
            if views:
                _, view_logits = batch_outputs_and_logits(opened, tta_views(batch, views))
                averaged.append(apply_temperature(view_logits, temperature, SIGMOID)
                                .reshape(len(views), len(batch_outputs), -1).mean(axis=0))
            examples.add_batch(position, np.asarray(batch), targets[position:position + len(batch_outputs)],
                               apply_temperature(batch_logits, temperature, SIGMOID))
            position += len(batch_outputs)
            progress.update(position)
    if position != len(targets):
        raise RunFailure(f"the data gave {position} images but the split lists {len(targets)}")
    predictions = LabelPredictions(np.concatenate(outputs), np.concatenate(logits), targets)
    return (predictions, predictions.probabilities(temperature), (np.concatenate(averaged) if views else None),
            examples)


def predictions_csv(object_ids: list[str], targets: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray,
                    labels: list[str]) -> str:
    """objectId, true, predicted (labels joined by ``;``), then each label's probability."""
    import pandas as pd

    predicted = multi_label_predictions(probabilities, thresholds)

    def joined(rows: np.ndarray) -> list[str]:
        return [";".join(label for label, on in zip(labels, row) if on) for row in rows]

    frame = pd.DataFrame({"objectId": list(object_ids), "true": joined(targets > 0.5), "predicted": joined(predicted)})
    for index, label in enumerate(labels):
        frame[f"probability_{label}" if label in RESERVED_COLUMNS else label] = probabilities[:, index]
    return frame_csv_text(frame, float_format="%.6g")   # labels and file names cannot run as formulas


def evaluate_multi_label_into(run: RunDirectory, config_payload: dict[str, Any], *, subset: str, batch_size: int,
                              output_dir: Path, views: list[str] | None, trust_hub: bool = False) -> dict[str, Any]:
    """The evaluation of a multi-label run's ``subset`` into ``output_dir`` (under the run's lock);
    ``trust_hub``: the model may load the TF Hub module the run records as its base."""
    from keras_cnn import report
    from keras_cnn.models.loading import hub_base_of, load_model
    from keras_cnn.models.opened import open_model

    run_config = RunConfig.from_dict(config_payload)
    labels = run.read_labels()
    check_output_path(output_dir, directory=True, option="the evaluation folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    part = load_part(run, run_config, subset, batch_size)
    if len(part.targets) == 0:
        raise UserError(f"the {subset} part of {run.root} has no images")
    thresholds = read_thresholds(run, labels)
    temperature = run_temperature(run)
    opened = open_model(load_model(run.model_path,
                                   trust_hub=hub_base_of(run_config.model.name) if trust_hub else None))
    predictions, probabilities, tta_probabilities, examples = predict_multi_label(opened, part, thresholds,
                                                                                  temperature, views)
    targets = predictions.targets
    # The loss is the model's own (as val_loss); every other number is of the calibrated probabilities.
    metrics = compute_multi_label_metrics(targets, probabilities, labels, thresholds, loss=predictions.loss())
    metrics = {"run": str(run.root), "subset": subset, **metrics,
               "calibration": part_block(predictions, temperature)}
    if tta_probabilities is not None:
        metrics["tta"] = {"views": views, **compute_multi_label_metrics(
            targets, tta_probabilities, labels, thresholds, loss=binary_cross_entropy(tta_probabilities, targets))}
    files = {
        "metrics": atomic_write_json(output_dir / "metrics.json", metrics),
        "predictions": atomic_write_text(output_dir / "predictions.csv",
                                         predictions_csv(part.object_ids, targets, probabilities, thresholds, labels)),
    }
    pictures = {}
    if run.history_path.exists():
        pictures["Training history"] = files["training_plot"] = report.plot_training_history(
            run.history_path, output_dir / "training.png")
    pictures["Reliability diagram (every label's yes/no decision)"] = files["reliability_plot"] = \
        report.plot_reliability_diagram(reliability_bins(*label_decisions(predictions.probabilities(None), targets)),
                                        reliability_bins(*label_decisions(probabilities, targets))
                                        if temperature is not None else None,
                                        output_dir / "reliability.png", temperature=temperature)
    pictures["Precision-recall curves"] = files["precision_recall_plot"] = report.plot_precision_recall_curves(
        targets, probabilities, labels, thresholds, output_dir / "precision_recall.png")
    pictures["Labels most often missed or added"] = files["label_mistakes_plot"] = report.plot_label_mistakes(
        examples.rows(metrics, labels, part.object_ids), output_dir / "label_mistakes.png")
    files["report"] = report.write_html_report(
        run.root, metrics, config_payload, pictures, output_dir / "report.html",
        links={"metrics.json": files["metrics"], "predictions.csv": files["predictions"]})
    summary = {"run": str(run.root), "subset": subset, "multi_label": True, "num_samples": metrics["num_samples"],
               **{name: metrics[name] for name in SUMMARY}, "calibration": metrics["calibration"]}
    if "tta" in metrics:
        summary["tta"] = {"views": views, **{name: metrics["tta"][name] for name in SUMMARY}}
    summary["output_dir"] = str(output_dir)
    summary["files"] = {name: str(path) for name, path in files.items()}
    return summary
