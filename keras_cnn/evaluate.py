"""``kcnn evaluate``: predict one part of a finished run and write its report.

The numbers come from :mod:`keras_cnn.metrics` (:func:`compute_metrics`, pure numpy and
scipy).  :func:`evaluate_run` loads a finished run, predicts one part of its data (rebuilt by
:func:`keras_cnn.run_data.load_subset` from the run folder) and writes ``RUN/eval/``: metrics.json,
predictions.csv, confusion_matrix.png, training.png, misclassified.png and report.html.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import Any

import numpy as np

from keras_cnn.errors import RunFailure, UserError
from keras_cnn.progress import ProgressBar
from keras_cnn.io import atomic_write_json, atomic_write_text, check_output_path
from keras_cnn.metrics import compute_metrics, cross_entropy, outputs_to_probabilities
from keras_cnn.multilabel_evaluation import evaluate_multi_label_into
from keras_cnn.run_data import SUBSETS, load_subset
from keras_cnn.runs import RunDirectory, RunLock

MISCLASSIFIED_IMAGES = 25
DEFAULT_BATCH_SIZE = 32
PREDICTION_COLUMNS = ("objectId", "true", "predicted", "confidence")


# --------------------------------------------------------------------------- model outputs


def outputs_are_logits(model) -> bool:
    """True when the last layer has no squashing activation (the model outputs logits)."""
    import keras

    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return activation is keras.activations.linear


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


def predict_subset(model, dataset, true_indices: np.ndarray, num_classes: int,
                   keeper: MistakeKeeper | None = None, tta_views: list[str] | None = None):
    """Predict every batch of ``dataset``: returns (raw outputs, class probabilities, from_logits, tta).

    The images of mistakes are offered to ``keeper`` on the way.  With ``tta_views`` (names
    from :func:`keras_cnn.tta.view_names`) each batch is also predicted on those views and
    ``tta`` is ``(outputs, probabilities)`` of the averaged probabilities (``outputs`` in the
    model's own form: the probability column of a sigmoid unit, else class probabilities);
    without, ``tta`` is None.
    """
    from_logits = outputs_are_logits(model)
    outputs, probabilities, tta_probabilities = [], [], []
    position = 0
    with ProgressBar(len(true_indices), f"predicting {len(true_indices)} images") as progress:
        for batch in dataset:
            batch_outputs = np.asarray(model.predict_on_batch(batch), dtype=np.float32)
            batch_probabilities = outputs_to_probabilities(batch_outputs, num_classes, from_logits)
            outputs.append(batch_outputs.reshape(len(batch_outputs), -1))
            probabilities.append(batch_probabilities)
            if tta_views:
                tta_probabilities.append(_tta_probabilities(model, batch, tta_views, num_classes, from_logits))
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
    tta = None
    if tta_views:
        averaged = np.concatenate(tta_probabilities, axis=0)
        tta_outputs = averaged[:, 1:] if outputs[0].shape[1] == 1 else averaged
        tta = (tta_outputs, averaged)
    return np.concatenate(outputs, axis=0), np.concatenate(probabilities, axis=0), from_logits, tta


def _tta_probabilities(model, batch, views: list[str], num_classes: int, from_logits: bool) -> np.ndarray:
    """Class probabilities of one batch averaged over the TTA views."""
    from keras_cnn.tta import tta_views

    stacked = tta_views(batch, views)
    view_outputs = np.asarray(model.predict_on_batch(stacked), dtype=np.float32)
    view_probabilities = outputs_to_probabilities(view_outputs, num_classes, from_logits)
    return view_probabilities.reshape(len(views), -1, num_classes).mean(axis=0)


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
    return frame.to_csv(index=False, float_format="%.6g")


def evaluate_run(run_dir: str | os.PathLike, subset: str = "test", batch_size: int | None = None,
                 output_dir: str | os.PathLike | None = None, tta: int | None = None) -> dict[str, Any]:
    """Evaluate a finished run on its ``subset`` ("test" or "validation") and write the report.

    Writes (each file atomically) into ``output_dir`` (default ``RUN/eval`` for the test part,
    ``RUN/eval/validation`` for the validation part, so one never replaces the other): metrics.json,
    predictions.csv, confusion_matrix.png, training.png (when the run has history.csv),
    misclassified.png and report.html. Returns a summary: run, subset, num_samples,
    accuracy, loss, macro_f1, roc_auc (two classes), output_dir and the written files.

    ``tta``: also predict each image on that many fixed views (:mod:`keras_cnn.tta`) and
    average; metrics.json then holds the TTA metrics under ``"tta"`` beside the plain ones,
    the report shows both side by side, and the summary gets ``tta`` (views, accuracy, loss,
    macro_f1).  The other files describe the plain predictions.

    A multi-label run (``config.json``'s ``data.multi_label``) is scored at its per-label
    thresholds instead (:mod:`keras_cnn.multilabel_evaluation`): mAP, F1, exact match,
    Hamming loss and a per-label table; its summary names those.
    """
    from keras_cnn.config import RunConfig
    from keras_cnn.tta import trained_with_flips, view_names

    run = RunDirectory(run_dir).require()
    if subset not in SUBSETS:
        raise UserError(f"subset must be one of {SUBSETS}, received {subset!r}")
    config_payload = run.read_config()
    run_config = RunConfig.from_dict(config_payload)
    batch_size = int(batch_size or run_config.training.batch_size or DEFAULT_BATCH_SIZE)
    views = view_names(int(tta), trained_with_flips(run_config)) if tta else None
    if output_dir is None:
        output_dir = run.eval_dir if subset == "test" else run.eval_dir / subset
    # The run's lock: no evaluation of a model that a training process is replacing.
    with RunLock(run.root):
        return _evaluate_into(run, config_payload, subset=subset, batch_size=batch_size, output_dir=Path(output_dir),
                              views=views)


def _evaluate_into(run: RunDirectory, config_payload: dict[str, Any], *, subset: str, batch_size: int,
                   output_dir: Path, views: list[str] | None) -> dict[str, Any]:
    """The evaluation itself, under the run's lock (see :func:`evaluate_run`)."""
    from keras_cnn import report
    from keras_cnn.config import RunConfig

    run_config = RunConfig.from_dict(config_payload)
    if run_config.data.multi_label:
        return evaluate_multi_label_into(run, config_payload, subset=subset, batch_size=batch_size,
                                         output_dir=output_dir, views=views)
    labels = run.read_labels()

    check_output_path(output_dir, directory=True, option="the evaluation folder")
    output_dir.mkdir(parents=True, exist_ok=True)
    object_ids, true_indices, dataset = load_subset(run_config, run.root, subset, batch_size)
    if len(true_indices) == 0:
        raise UserError(f"the {subset} part of {run.root} has no images")
    from keras_cnn.models.loading import load_model

    model = load_model(run.model_path)
    keeper = MistakeKeeper()
    outputs, probabilities, from_logits, tta_result = predict_subset(
        model, dataset, true_indices, len(labels), keeper, tta_views=views)
    loss = cross_entropy(outputs, true_indices, from_logits)
    metrics = compute_metrics(true_indices, probabilities, labels, loss=loss)
    metrics = {"run": str(run.root), "subset": subset, **metrics}
    if tta_result is not None:
        tta_outputs, tta_probabilities = tta_result
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
    predicted_indices = probabilities.argmax(axis=1)
    positions, images = keeper.positions_and_images()
    pictures["Most confident mistakes"] = files["misclassified_plot"] = report.plot_misclassified(
        images,
        [int(true_indices[position]) for position in positions],
        [int(predicted_indices[position]) for position in positions],
        [float(probabilities[position].max()) for position in positions],
        labels,
        output_dir / "misclassified.png",
        object_ids=[object_ids[position] for position in positions],
    )
    files["report"] = report.write_html_report(
        run.root, metrics, config_payload, pictures, output_dir / "report.html",
        links={"metrics.json": files["metrics"], "predictions.csv": files["predictions"]},
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
    if "tta" in metrics:
        summary["tta"] = {key: metrics["tta"][key] for key in ("views", "accuracy", "loss", "macro_f1")}
    summary["output_dir"] = str(output_dir)
    summary["files"] = {name: str(path) for name, path in files.items()}
    return summary
