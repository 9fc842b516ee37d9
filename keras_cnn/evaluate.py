"""``kcnn evaluate``: predict one part of a finished run and write its report.

The numbers come from :mod:`keras_cnn.metrics` (:func:`compute_metrics`, pure numpy and
scipy).  :func:`evaluate_run` loads a finished run, predicts one part of its data (rebuilt by
:func:`keras_cnn.run_data.load_subset` from the run folder) in one pass of the model opened up
(:mod:`keras_cnn.models.opened`: its own outputs and its logits), applies the run's temperature
(:mod:`keras_cnn.run_calibration`) and writes ``RUN/eval/``: metrics.json, predictions.csv,
confusion_matrix.png, training.png, reliability.png, coverage.png, misclassified.png (with
Grad-CAM heat maps over the mistakes, :mod:`keras_cnn.explain`) and report.html.
"""

from __future__ import annotations

import heapq
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keras_cnn.calibration import KINDS, SIGMOID, class_probabilities, head_kind
from keras_cnn.errors import RunFailure, UserError
from keras_cnn.io import atomic_write_json, atomic_write_text, check_output_path
from keras_cnn.metrics import (accuracy_lower_bound, compute_metrics, coverage_accuracy_curve, cross_entropy,
                               reliability_bins, selective_metrics, threshold_for_accuracy)
from keras_cnn.progress import ProgressBar, say, warn
from keras_cnn.run_calibration import (PartPredictions, batch_outputs_and_logits, part_block, predict_part,
                                       run_temperature, store_reject_below, stored_reject_below)
from keras_cnn.run_data import SUBSETS, check_run_inputs, load_subset, run_labels
from keras_cnn.multilabel_evaluation import evaluate_multi_label_into
from keras_cnn.runs import RunDirectory, RunLock
from keras_cnn.spreadsheet import frame_csv_text

MISCLASSIFIED_IMAGES = 25
# The report's caption of the mistakes grid says when each tile shows where the model looked.
MISTAKE_HEATMAP_CAPTION = ", with where the model looked (Grad-CAM heat maps)"
DEFAULT_BATCH_SIZE = 32
PREDICTION_COLUMNS = ("objectId", "true", "predicted", "confidence")


# --------------------------------------------------------------------------- model outputs


class MistakeKeeper:
    """Keeps the images of the ``capacity`` most confident mistakes seen so far.

    Predictions stream batch by batch, so a large test set is never held in memory whole.
    """

    def __init__(self, capacity: int = MISCLASSIFIED_IMAGES):
        self.capacity = capacity
        self._heap: list[tuple[float, int, np.ndarray]] = []   # min-heap on (confidence, -position)

    def add(self, position: int, image: np.ndarray, confidence: float) -> None:
        item = (float(confidence), -int(position), image)
        if len(self._heap) < self.capacity:
            heapq.heappush(self._heap, item)
        elif item[:2] > self._heap[0][:2]:
            heapq.heapreplace(self._heap, item)

    def positions_and_images(self) -> tuple[list[int], list[np.ndarray]]:
        """Positions (into the subset) and images, most confident first."""
        ordered = sorted(self._heap, key=lambda item: (-item[0], -item[1]))
        return [-item[1] for item in ordered], [item[2] for item in ordered]


@dataclass
class SubsetPredictions:
    """One pass over a part: the model's own outputs, its logits, and the (calibrated) class probabilities."""

    predictions: PartPredictions
    probabilities: np.ndarray                    # (n, classes) at the run's temperature
    tta: tuple[np.ndarray, np.ndarray] | None    # (outputs, probabilities) averaged over TTA views


def predict_subset(opened, dataset, true_indices: np.ndarray, temperature: float | None = None,
                   keeper: MistakeKeeper | None = None, tta_views: list[str] | None = None) -> SubsetPredictions:
    """Predict every batch of ``dataset`` with the opened model (:mod:`keras_cnn.models.opened`), once.

    The probabilities are those of the logits divided by ``temperature`` (None: the model's
    own); the images of mistakes are offered to ``keeper`` on the way, with their calibrated
    confidence.  With ``tta_views`` (names from :func:`keras_cnn.tta.view_names`) each batch
    is also predicted on those views and ``tta`` is ``(outputs, probabilities)`` of the
    averaged calibrated probabilities (``outputs`` in the model's own form: the probability
    column of a sigmoid unit, else class probabilities).
    """
    outputs, logits, tta_probabilities = [], [], []
    kind = None
    position = 0
    with ProgressBar(len(true_indices), f"predicting {len(true_indices)} images") as progress:
        for batch in dataset:
            batch_outputs, batch_logits = batch_outputs_and_logits(opened, batch)
            kind = kind or head_kind(opened.activation, batch_outputs.shape[1])
            batch_probabilities = class_probabilities(batch_logits, temperature, kind)
            outputs.append(batch_outputs)
            logits.append(batch_logits)
            if tta_views:
                tta_probabilities.append(_tta_probabilities(opened, batch, tta_views, temperature, kind))
            if keeper is not None:
                predicted = batch_probabilities.argmax(axis=1)
                truth = true_indices[position: position + len(predicted)]
                images = np.asarray(batch)
                for offset in np.flatnonzero(predicted != truth):
                    keeper.add(position + int(offset), images[offset], batch_probabilities[offset].max())
            position += len(batch_outputs)
            progress.update(position)
    if position != len(true_indices):
        raise RunFailure(f"the data gave {position} images but the split lists {len(true_indices)}")
    predictions = PartPredictions(np.concatenate(outputs), np.concatenate(logits),
                                  np.asarray(true_indices, dtype=np.int64), kind)
    tta = None
    if tta_views:
        averaged = np.concatenate(tta_probabilities, axis=0)
        tta = (averaged[:, 1:] if kind == SIGMOID else averaged, averaged)
    return SubsetPredictions(predictions, predictions.probabilities(temperature), tta)


def _tta_probabilities(opened, batch, views: list[str], temperature: float | None, kind: str) -> np.ndarray:
    """Calibrated class probabilities of one batch averaged over the TTA views."""
    from keras_cnn.tta import tta_views

    _, view_logits = batch_outputs_and_logits(opened, tta_views(batch, views))
    view_probabilities = class_probabilities(view_logits, temperature, kind)
    return view_probabilities.reshape(len(views), -1, view_probabilities.shape[-1]).mean(axis=0)


# --------------------------------------------------------------------------- the whole evaluation


def _predictions_csv(object_ids, true_indices, probabilities, labels) -> str:
    import pandas as pd

    predicted = probabilities.argmax(axis=1)
    frame = pd.DataFrame({
        "objectId": list(object_ids),
        "true": [labels[index] for index in true_indices],
        "predicted": [labels[index] for index in predicted],
        "confidence": probabilities.max(axis=1),
    })
    for index, label in enumerate(labels):
        # A label spelled like a fixed column would make the header ambiguous.
        column = f"probability_{label}" if label in PREDICTION_COLUMNS else label
        frame[column] = probabilities[:, index]
    return frame_csv_text(frame, float_format="%.6g")   # labels and file names cannot run as formulas


def evaluate_run(run_dir: str | os.PathLike, subset: str = "test", batch_size: int | None = None,
                 output_dir: str | os.PathLike | None = None, tta: int | None = None,
                 target_accuracy: float | None = None, trust_hub: bool = False,
                 accept_input_changes: bool = False) -> dict[str, Any]:
    """Evaluate a finished run on its ``subset`` ("test" or "validation") and write the report.

    Writes (each file atomically) into ``output_dir`` (default ``RUN/eval`` for the test part,
    ``RUN/eval/validation`` for the validation part, so one never replaces the other): metrics.json,
    predictions.csv, confusion_matrix.png, training.png (when the run has history.csv),
    reliability.png, coverage.png, misclassified.png and report.html. Returns a summary: run,
    subset, num_samples, accuracy, loss, macro_f1, roc_auc (two classes), calibration,
    selective (when a threshold applies), notes (why the numbers mean little, if they do: the
    report's first lines), output_dir and the written files.

    The probabilities are the calibrated ones when the run has a temperature
    (``RUN/calibration.json``; predictions.csv, the confidences and the mistakes); ``loss`` is
    the model's own cross-entropy (as ``val_loss``), and metrics.json's ``"calibration"`` has
    ECE, NLL and Brier score before and after the temperature.

    ``target_accuracy``: choose on the validation part the lowest threshold whose accepted
    images (top calibrated probability at least the threshold) reach that accuracy, store it
    in the run (``kcnn export`` copies it as ``reject_below``) and report coverage and
    accuracy at it (metrics.json's ``"selective"``); without it a stored threshold is reported.

    ``tta``: also predict each image on that many fixed views (:mod:`keras_cnn.tta`) and
    average; metrics.json then holds the TTA metrics under ``"tta"`` beside the plain ones,
    the report shows both side by side, and the summary gets ``tta`` (views, accuracy, loss,
    macro_f1).  The other files describe the plain predictions.  ``trust_hub``: the model may
    load the TF Hub module the run records as its base (see :mod:`keras_cnn.models.loading`).

    First the run's labels.txt must agree with its config.json, and its split and images with
    its input record: changed, missing or added images and an edited split are refused unless
    ``accept_input_changes`` (which records them in the run).

    A multi-label run (``config.json``'s ``data.multi_label``) is scored at its per-label
    thresholds instead (:mod:`keras_cnn.multilabel_evaluation`): mAP, F1, exact match,
    Hamming loss and a per-label table; its summary names those.  It has no "none of these"
    threshold (``target_accuracy`` is refused): its labels' thresholds decide.
    """
    from keras_cnn.config import RunConfig

    run = RunDirectory(run_dir).require()
    views = check_evaluation_options(run, subset, tta, target_accuracy)
    config_payload = run.read_config()
    run_config = RunConfig.from_dict(config_payload)
    batch_size = int(batch_size or run_config.training.batch_size or DEFAULT_BATCH_SIZE)
    if output_dir is None:
        output_dir = run.eval_dir if subset == "test" else run.eval_dir / subset
    # The run's lock: no evaluation of a model that a training process is replacing.
    with RunLock(run.root):
        run.check_ownership()
        run.claim()
        return _evaluate_into(run, config_payload, subset=subset, batch_size=batch_size, output_dir=Path(output_dir),
                              views=views, target_accuracy=target_accuracy, trust_hub=trust_hub,
                              accept_input_changes=accept_input_changes)


def check_evaluation_options(run: RunDirectory, subset: str, tta: int | None,
                             target_accuracy: float | None) -> list[str] | None:
    """Refuse options the run cannot be evaluated with, from its config.json alone (no TensorFlow, no image):
    the command line calls it before anything starts.  Returns the TTA views (None without ``tta``)."""
    from keras_cnn.config import RunConfig
    from keras_cnn.tta import trained_with_flips, view_names

    if subset not in SUBSETS:
        raise UserError(f"subset must be one of {SUBSETS}, received {subset!r}")
    if target_accuracy is not None and not 0 < float(target_accuracy) <= 1:   # NaN too
        raise UserError(f"--target-accuracy must be in (0, 1], received: {target_accuracy}")
    run_config = RunConfig.from_dict(run.read_config())
    if run_config.data.multi_label and target_accuracy is not None:
        raise UserError("--target-accuracy chooses a 'none of these' threshold for single-label runs; a "
                        "multi-label run answers each label at its own threshold (RUN/thresholds.json)")
    return view_names(int(tta), trained_with_flips(run_config)) if tta else None


def _evaluate_into(run: RunDirectory, config_payload: dict[str, Any], *, subset: str, batch_size: int,
                   output_dir: Path, views: list[str] | None, target_accuracy: float | None, trust_hub: bool,
                   accept_input_changes: bool) -> dict[str, Any]:
    """The evaluation itself, under the run's lock (see :func:`evaluate_run`)."""
    from keras_cnn import report
    from keras_cnn.config import RunConfig
    from keras_cnn.models.loading import hub_base_of, load_model
    from keras_cnn.models.opened import open_model

    run_config = RunConfig.from_dict(config_payload)
    labels = run_labels(run, run_config)
    # Before any image is read; the parts then leave out what the record does.
    check_run_inputs(run, run_config, accept=accept_input_changes, command="kcnn evaluate")
    if run_config.data.multi_label:
        return evaluate_multi_label_into(run, config_payload, subset=subset, batch_size=batch_size,
                                         output_dir=output_dir, views=views, trust_hub=trust_hub)

    check_output_path(output_dir, directory=True, option="the evaluation folder")
    object_ids, true_indices, dataset = load_subset(run_config, run.root, subset, batch_size)
    if len(true_indices) == 0:
        raise UserError(f"the {subset} part of {run.root} has no images")
    trusted = hub_base_of(run_config.model.name) if trust_hub else None
    opened = open_model(load_model(run.model_path, trust_hub=trusted))
    temperature = run_temperature(run)
    selection = _threshold_choice(run, run_config, opened, temperature, batch_size, subset, target_accuracy)
    output_dir.mkdir(parents=True, exist_ok=True)
    keeper = MistakeKeeper()
    result = predict_subset(opened, dataset, true_indices, temperature, keeper, tta_views=views)
    predictions, probabilities = result.predictions, result.probabilities
    loss = cross_entropy(predictions.outputs, true_indices, from_logits=opened.activation not in KINDS)
    metrics = compute_metrics(true_indices, probabilities, labels, loss=loss)
    metrics = {"run": str(run.root), "subset": subset, **metrics,
               "calibration": part_block(predictions, temperature)}
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == true_indices
    if selection is not None:
        metrics["selective"] = _selective_block(selection, confidence, correct)
    if result.tta is not None:
        tta_outputs, tta_probabilities = result.tta
        tta_metrics = compute_metrics(true_indices, tta_probabilities, labels,
                                      loss=cross_entropy(tta_outputs, true_indices))
        metrics["tta"] = {"views": views, **tta_metrics}

    files = {
        "metrics": atomic_write_json(output_dir / "metrics.json", metrics),
        "predictions": atomic_write_text(
            output_dir / "predictions.csv", _predictions_csv(object_ids, true_indices, probabilities, labels)
        ),
    }
    pictures = {}
    if run.history_path.exists():
        pictures["Training history"] = files["training_plot"] = report.plot_training_history(
            run.history_path, output_dir / "training.png"
        )
    pictures["Confusion matrix"] = files["confusion_matrix_plot"] = report.plot_confusion_matrix(
        metrics["confusion_matrix"], labels, output_dir / "confusion_matrix.png"
    )
    pictures["Reliability diagram"] = files["reliability_plot"] = report.plot_reliability_diagram(
        reliability_bins(predictions.probabilities(None), true_indices),
        reliability_bins(probabilities, true_indices) if temperature is not None else None,
        output_dir / "reliability.png", temperature=temperature,
    )
    pictures["Coverage and accuracy"] = files["coverage_plot"] = report.plot_coverage_accuracy(
        coverage_accuracy_curve(confidence, correct), output_dir / "coverage.png",
        selection=metrics.get("selective"),
    )
    predicted_indices = probabilities.argmax(axis=1)
    positions, images = keeper.positions_and_images()
    mistake_truth = [int(true_indices[position]) for position in positions]
    mistake_answers = [int(predicted_indices[position]) for position in positions]
    mistake_confidences = [float(probabilities[position].max()) for position in positions]
    mistake_files = [object_ids[position] for position in positions]
    heatmaps = _mistake_heatmaps(opened, images, temperature)
    caption = "Most confident mistakes" + (MISTAKE_HEATMAP_CAPTION if heatmaps is not None else "")
    pictures[caption] = files["misclassified_plot"] = report.plot_misclassified(
        images, mistake_truth, mistake_answers, mistake_confidences, labels, output_dir / "misclassified.png",
        max_images=MISCLASSIFIED_IMAGES, object_ids=mistake_files, heatmaps=heatmaps,
    )
    # The picture's tiles in their order, for the report's table of whole file names.
    tiles = report.mistake_indices(mistake_truth, mistake_answers, mistake_confidences, MISCLASSIFIED_IMAGES)
    mistakes = [{"file": mistake_files[tile], "true": labels[mistake_truth[tile]],
                 "predicted": labels[mistake_answers[tile]], "confidence": mistake_confidences[tile]}
                for tile in tiles]
    files["report"] = report.write_html_report(
        run.root, metrics, config_payload, pictures, output_dir / "report.html",
        links={"metrics.json": files["metrics"], "predictions.csv": files["predictions"]}, mistakes=mistakes,
    )
    summary = {
        "run": str(run.root),
        "subset": subset,
        "num_samples": metrics["num_samples"],
        "accuracy": metrics["accuracy"],
        "loss": metrics["loss"],
        "macro_f1": metrics["macro_f1"],
    }
    if "roc_auc" in metrics:
        summary["roc_auc"] = metrics["roc_auc"]
    summary["calibration"] = metrics["calibration"]
    if "selective" in metrics:
        summary["selective"] = metrics["selective"]
    if "tta" in metrics:
        summary["tta"] = {key: metrics["tta"][key] for key in ("views", "accuracy", "loss", "macro_f1")}
    summary["notes"] = report.reading_notes(metrics, config_payload)
    summary["output_dir"] = str(output_dir)
    summary["files"] = {name: str(path) for name, path in files.items()}
    return summary


def _threshold_choice(run: RunDirectory, run_config, opened, temperature: float | None, batch_size: int,
                      subset: str, target_accuracy: float | None) -> dict[str, Any] | None:
    """The "none of these" threshold to report: chosen now on the validation part (and stored in the
    run) when ``target_accuracy`` is given, else the one stored before (None when there is none)."""
    from keras_cnn.data.pipeline import EmptyPart
    from keras_cnn.run_data import load_part

    if target_accuracy is None:
        return stored_reject_below(run)
    try:
        part = load_part(run, run_config, "validation", batch_size)
    except EmptyPart:
        raise UserError(f"--target-accuracy chooses its threshold on the validation part, and {run.root} "
                        "has none") from None
    validation = predict_part(opened, part.images(), part.true_indices,
                              f"predicting {len(part.true_indices)} validation images to choose the threshold")
    probabilities = validation.probabilities(temperature)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == validation.true_indices
    threshold = threshold_for_accuracy(confidence, correct, target_accuracy)
    if threshold is None:
        best = coverage_accuracy_curve(confidence, correct)["accuracy"].max()
        warn(f"no threshold reaches accuracy {target_accuracy:g} on the {len(confidence)} validation images "
             f"(the most confident reach {best:.4f}); nothing stored")
        return {"target_accuracy": float(target_accuracy), "threshold": None}
    chosen = selective_metrics(confidence, correct, threshold)
    right = int(correct[confidence >= threshold].sum())
    # Chosen where the validation part happens to reach the target: on few images that says little.
    chosen["accuracy_lower_bound"] = accuracy_lower_bound(right, chosen["accepted"])
    if chosen["accuracy_lower_bound"] < target_accuracy:
        warn(f"the threshold {threshold:.4g} rests on {chosen['accepted']} validation images ({right} right): at 95 % "
             f"confidence their accuracy is only known to be above {chosen['accuracy_lower_bound']:.3f}, so other "
             f"images may get less than {target_accuracy:g}; a larger validation part pins it down")
    selection = {"target_accuracy": float(target_accuracy), "threshold": threshold, "temperature": temperature,
                 "validation": chosen}
    store_reject_below(run, selection)
    return selection


def _selective_block(selection: dict[str, Any], confidence: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """metrics.json's ``"selective"``: the threshold and what answering only above it gives on this part."""
    if selection.get("threshold") is None:
        return {"target_accuracy": selection["target_accuracy"], "threshold": None, "coverage": 0.0,
                "accuracy": None, "accepted": 0, "num_samples": int(len(confidence))}
    return {"target_accuracy": selection.get("target_accuracy"),
            **selective_metrics(confidence, correct, selection["threshold"]),
            "validation": selection.get("validation")}


def _mistake_heatmaps(opened, images: list[np.ndarray], temperature: float | None) -> list[np.ndarray] | None:
    """Grad-CAM maps of the mistakes (for the class predicted), one batch; None when the model has no feature map."""
    if not images:
        return None
    if not opened.has_feature_map:
        say(f"kcnn: no heat maps over the mistakes: {opened.no_feature_map}")
        return None
    from keras_cnn.explain import explain_images

    return list(np.asarray(explain_images(opened, np.stack(images), temperature)["heatmap"]))
