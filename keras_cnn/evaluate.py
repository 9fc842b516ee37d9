"""Evaluation: metrics from predictions (pure numpy) and ``kcnn evaluate`` on a run.

:func:`compute_metrics` turns true class indices and predicted probabilities into the
numbers of ``RUN/eval/metrics.json``; it needs numpy only, so it is cheap to test by hand.
:func:`evaluate_run` loads a finished run, predicts one part of its data (rebuilt by
:func:`load_subset` from ``config.json``) and writes ``RUN/eval/``: metrics.json,
predictions.csv, confusion_matrix.png, training.png, misclassified.png and report.html.

Conventions (the same as scikit-learn's with ``zero_division=0``):

* precision of a class no sample was predicted as, recall of a class with no samples,
  and F1 where precision + recall = 0 are 0, not NaN, so metrics.json stays valid JSON;
* macro averages weigh every class in ``labels.txt`` equally (absent classes included),
  weighted averages weigh each class by its number of true samples (support);
* top-k accuracy counts a sample as a hit when fewer than k classes got a strictly higher
  probability than its true class (ties at the boundary count as hits, like
  ``tf.math.in_top_k``); it is reported for k in 2, 3, 5 where k < number of classes;
* ROC AUC is reported for two classes only, with class index 1 as the positive class.
"""

from __future__ import annotations

import heapq
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from keras_cnn.errors import RunFailure, UserError
from keras_cnn.progress import ProgressBar
from keras_cnn.io import atomic_write_json, atomic_write_text, check_output_path
from keras_cnn.runs import RunDirectory, RunLock

TOP_K_CANDIDATES = (2, 3, 5)
MOST_CONFUSED_COUNT = 5
MISCLASSIFIED_IMAGES = 25
DEFAULT_BATCH_SIZE = 32
SUBSETS = ("test", "validation", "train")
PREDICTION_COLUMNS = ("objectId", "true", "predicted", "confidence")


# --------------------------------------------------------------------------- metrics


def as_class_probabilities(probabilities: Any, num_classes: int) -> np.ndarray:
    """Return an (n, num_classes) float64 array; one sigmoid column p becomes [1 - p, p]."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 1 or (probabilities.ndim == 2 and probabilities.shape[1] == 1):
        if num_classes != 2:
            raise ValueError(
                f"one probability per sample needs exactly 2 labels, received {num_classes} labels"
            )
        positive = probabilities.reshape(-1)
        return np.stack([1.0 - positive, positive], axis=1)
    if probabilities.ndim != 2 or probabilities.shape[1] != num_classes:
        raise ValueError(
            f"probabilities must have shape (n, {num_classes}), received shape {probabilities.shape}"
        )
    return probabilities


def confusion_matrix(true_indices: Any, predicted_indices: Any, num_classes: int) -> np.ndarray:
    """Counts (num_classes x num_classes): row = true class, column = predicted class."""
    true_indices = np.asarray(true_indices, dtype=np.int64).reshape(-1)
    predicted_indices = np.asarray(predicted_indices, dtype=np.int64).reshape(-1)
    flat = np.bincount(true_indices * num_classes + predicted_indices, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Element-wise numerator / denominator, 0 where the denominator is 0."""
    numerator = np.asarray(numerator, dtype=np.float64)
    denominator = np.asarray(denominator, dtype=np.float64)
    result = np.zeros_like(numerator)
    np.divide(numerator, denominator, out=result, where=denominator != 0)
    return result


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-class precision, recall, F1 and support from a confusion matrix (0 where undefined)."""
    matrix = np.asarray(matrix, dtype=np.int64)
    correct = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted_count = matrix.sum(axis=0)
    precision = _safe_divide(correct, predicted_count)
    recall = _safe_divide(correct, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return precision, recall, f1, support


def top_k_accuracy(true_indices: Any, probabilities: Any, k: int) -> float:
    """Fraction of samples whose true class is among the k most probable (ties count as hits)."""
    true_indices = np.asarray(true_indices, dtype=np.int64).reshape(-1)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    true_probability = probabilities[np.arange(len(true_indices)), true_indices]
    higher = (probabilities > true_probability[:, None]).sum(axis=1)
    return float(np.mean(higher < k))


def average_ranks(values: Any) -> np.ndarray:
    """Ranks 1..n of ``values``; tied values share the mean of their ranks."""
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start of each run of equal values, then the mean rank of the run for its members.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank_per_run = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(mean_rank_per_run, ends - starts)
    return ranks


def roc_auc(is_positive: Any, scores: Any) -> float | None:
    """Area under the ROC curve by the rank (Mann-Whitney U) formula, ties counted as 1/2.

    AUC = (sum of the positives' ranks - P (P + 1) / 2) / (P N) with average ranks for ties.
    Returns None when one of the two classes has no sample (the AUC is undefined).
    """
    is_positive = np.asarray(is_positive, dtype=bool).reshape(-1)
    positives = int(is_positive.sum())
    negatives = len(is_positive) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = average_ranks(scores)
    rank_sum = ranks[is_positive].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def most_confused_pairs(matrix: np.ndarray, labels: Sequence[str],
                        count: int = MOST_CONFUSED_COUNT) -> list[dict]:
    """The off-diagonal cells with the most samples: [{true, predicted, count}], largest first."""
    matrix = np.asarray(matrix)
    pairs = [
        (int(matrix[true, predicted]), true, predicted)
        for true in range(matrix.shape[0])
        for predicted in range(matrix.shape[1])
        if true != predicted and matrix[true, predicted] > 0
    ]
    # Largest count first; equal counts keep labels.txt order so the output is stable.
    pairs.sort(key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [
        {"true": labels[true], "predicted": labels[predicted], "count": number}
        for number, true, predicted in pairs[:count]
    ]


def per_class_accuracy(true_indices: Any, predicted_indices: Any, labels: Sequence[str]) -> dict[str, float]:
    """Accuracy within each true class (= recall): {label: correct / samples of that label}.

    A label with no samples gets 0.0.
    """
    labels = [str(label) for label in labels]
    true_indices = _check_indices(true_indices, len(labels), "true_indices")
    predicted_indices = _check_indices(predicted_indices, len(labels), "predicted_indices")
    matrix = confusion_matrix(true_indices, predicted_indices, len(labels))
    _, recall, _, _ = precision_recall_f1(matrix)
    return {label: float(value) for label, value in zip(labels, recall)}


def _check_indices(indices: Any, num_classes: int, name: str) -> np.ndarray:
    indices = np.asarray(indices).reshape(-1)
    if indices.size and (not np.issubdtype(indices.dtype, np.integer)):
        if not np.all(np.equal(np.mod(indices, 1), 0)):
            raise ValueError(f"{name} must be integer class indices, received dtype {indices.dtype}")
    indices = indices.astype(np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in 0..{num_classes - 1}, "
            f"received values from {indices.min()} to {indices.max()}"
        )
    return indices


def compute_metrics(true_indices: Any, probabilities: Any, labels: Sequence[str],
                    loss: float | None = None) -> dict[str, Any]:
    """Every evaluation number for one set of predictions (see the module docstring).

    ``true_indices``: (n,) class indices into ``labels``. ``probabilities``: (n, N) class
    probabilities (a model with one sigmoid output: pass [1 - p, p], or the (n, 1) column,
    which is expanded the same way). ``loss`` is copied into the result as given.

    Returns a JSON-ready dict: num_samples, num_classes, labels, accuracy, loss,
    top_{k}_accuracy (k in 2, 3, 5 with k < N), macro_/weighted_ precision, recall, f1,
    roc_auc (two classes only), per_class {label: {precision, recall, f1, support, accuracy}},
    confusion_matrix (rows = true label, columns = predicted, labels.txt order) and
    most_confused (up to 5 {true, predicted, count}, largest first).
    """
    labels = [str(label) for label in labels]
    num_classes = len(labels)
    if num_classes < 2:
        raise ValueError(f"need at least 2 labels, received {labels!r}")
    probabilities = as_class_probabilities(probabilities, num_classes)
    true_indices = _check_indices(true_indices, num_classes, "true_indices")
    if len(true_indices) != len(probabilities):
        raise ValueError(
            f"true_indices and probabilities differ in length: {len(true_indices)} vs {len(probabilities)}"
        )
    if len(true_indices) == 0:
        raise ValueError("cannot compute metrics on 0 samples")

    predicted_indices = probabilities.argmax(axis=1)
    matrix = confusion_matrix(true_indices, predicted_indices, num_classes)
    precision, recall, f1, support = precision_recall_f1(matrix)
    weights = support / support.sum()

    metrics: dict[str, Any] = {
        "num_samples": int(len(true_indices)),
        "num_classes": num_classes,
        "labels": labels,
        "accuracy": float(np.trace(matrix) / matrix.sum()),
        "loss": None if loss is None else float(loss),
    }
    for k in TOP_K_CANDIDATES:
        if k < num_classes:
            metrics[f"top_{k}_accuracy"] = top_k_accuracy(true_indices, probabilities, k)
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        metrics[f"macro_{name}"] = float(values.mean())
        metrics[f"weighted_{name}"] = float((values * weights).sum())
    if num_classes == 2:
        metrics["roc_auc"] = roc_auc(true_indices == 1, probabilities[:, 1])
    metrics["per_class"] = {
        label: {
            "precision": float(precision[index]),
            "recall": float(recall[index]),
            "f1": float(f1[index]),
            "support": int(support[index]),
            "accuracy": float(recall[index]),
        }
        for index, label in enumerate(labels)
    }
    metrics["confusion_matrix"] = matrix.tolist()
    metrics["most_confused"] = most_confused_pairs(matrix, labels)
    return metrics


# --------------------------------------------------------------------------- run data


def _input_geometry(run_config) -> tuple[tuple[int, int] | None, int | None]:
    """(image_size, channels) the model was trained on, from the data or model options."""
    image_size = run_config.data.image_size
    channels = run_config.data.channels
    input_shape = run_config.model.input_shape
    if input_shape is not None:
        image_size = image_size or (int(input_shape[0]), int(input_shape[1]))
        channels = channels or int(input_shape[2])
    return (tuple(int(side) for side in image_size) if image_size else None), channels


def _images_only(images, labels):
    return images


def _split_subset(run_config, run: RunDirectory, subset: str, batch_size: int):
    import tensorflow as tf

    from keras_cnn.data import make_dataset
    from keras_cnn.data.files import read_skipped_record
    from keras_cnn.data.pipeline import label_indices, subset_frame
    from keras_cnn.data.split import read_split_csv

    data = run_config.data
    if not data.images:
        raise UserError(f"{run.config_path} names a split CSV ({data.split}) but no image folder")
    labels = run.read_labels()
    skip = read_skipped_record(run.skipped_images_path)
    split = read_split_csv(data.split, data.allow_labels)
    frame = subset_frame(split, subset, skip)
    image_size, channels = _input_geometry(run_config)
    if image_size is None:
        raise UserError(f"{run.config_path} records no image size for the model")
    dataset = make_dataset(
        split, data.images, subset,
        image_size=image_size, batch_size=batch_size, channels=channels or 3,
        augment=None, cache=False, shuffle=False, labels=labels,
        resize_mode=data.resize_mode, skip=skip,
    )
    images_only = dataset.map(_images_only, num_parallel_calls=tf.data.AUTOTUNE)
    object_ids = [str(object_id) for object_id in frame["objectId"].tolist()]
    true_indices = np.asarray(label_indices(frame["value"], labels, f"{data.split} ({subset})"), dtype=np.int64)
    return object_ids, true_indices, images_only


def _array_subset(run_config, run: RunDirectory, subset: str, batch_size: int):
    import tensorflow as tf

    from keras_cnn.data.datasets import adapt_images, holdout_split, load_dataset
    from keras_cnn.data.pipeline import array_pipeline, label_indices

    data = run_config.data
    arrays = load_dataset(data.dataset, data.dataset_path)
    if subset == "test":
        images, values, first, source = arrays.x_test, arrays.y_test, 0, "test"
    else:
        # The same hold-out as training: validation is the last fraction of x_train.
        parts = dict(zip(("train", "validation"), holdout_split(len(arrays.x_train), data.validation_split)))
        images, values = arrays.x_train[parts[subset]], arrays.y_train[parts[subset]]
        first, source = parts[subset].start, "train"
    object_ids = [f"{source}/{first + offset:06d}" for offset in range(len(images))]
    # Array labels are indices into the dataset's class names; labels.txt holds those names.
    names = [arrays.labels[int(value)] for value in np.asarray(values).reshape(-1)]
    true_indices = np.asarray(label_indices(names, run.read_labels(), f"{data.dataset} ({subset})"),
                              dtype=np.int64)

    image_size, channels = _input_geometry(run_config)
    if image_size is not None:
        images = adapt_images(images, (*image_size, channels or images.shape[-1]))
    # The training code's own pipeline (unshuffled), so the model sees what it was trained on.
    dataset = array_pipeline(images, true_indices, batch_size, shuffle=False, seed=0)
    return object_ids, true_indices, dataset.map(_images_only, num_parallel_calls=tf.data.AUTOTUNE)


def load_subset(run_config, run_dir: str | os.PathLike, subset: str, batch_size: int):
    """The images of one part of a run's data, in file order, as the model saw them.

    ``run_config`` is a :class:`keras_cnn.config.RunConfig` (or its dict). Returns
    ``(object_ids, true_indices, dataset)``: objectIds (file names, or ``test/000123`` for
    MNIST/CIFAR-10 arrays), class indices into ``labels.txt``, and a ``tf.data.Dataset`` of
    float32 0..255 image batches in the same order.
    """
    from keras_cnn.config import RunConfig

    if subset not in SUBSETS:
        raise UserError(f"subset must be one of {SUBSETS}, received {subset!r}")
    if isinstance(run_config, dict):
        run_config = RunConfig.from_dict(run_config)
    run = RunDirectory(run_dir)
    if run_config.data.split:
        return _split_subset(run_config, run, subset, batch_size)
    if run_config.data.dataset:
        return _array_subset(run_config, run, subset, batch_size)
    raise UserError(f"{run.config_path} names neither a split CSV nor a dataset: cannot rebuild the data")


# --------------------------------------------------------------------------- model outputs


def outputs_are_logits(model) -> bool:
    """True when the last layer has no squashing activation (the model outputs logits)."""
    import keras

    activation = getattr(model.layers[-1], "activation", None) if model.layers else None
    return activation is keras.activations.linear


def outputs_to_probabilities(outputs: Any, num_classes: int, from_logits: bool = False) -> np.ndarray:
    """Class probabilities (n, N) from raw model outputs.

    One output column is a sigmoid unit: p becomes [1 - p, p]; N columns are a softmax.
    ``from_logits`` applies the sigmoid or softmax the model left out.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    if outputs.shape[1] == 1:
        if num_classes != 2:
            raise RunFailure(f"the model has one output but labels.txt has {num_classes} labels")
        positive = 1.0 / (1.0 + np.exp(-outputs)) if from_logits else outputs
        return as_class_probabilities(positive, 2)
    if outputs.shape[1] != num_classes:
        raise RunFailure(f"the model has {outputs.shape[1]} outputs but labels.txt has {num_classes} labels")
    if from_logits:
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return outputs


def cross_entropy(outputs: Any, true_indices: Any, from_logits: bool = False) -> float:
    """Mean cross-entropy of raw model outputs, computed by Keras's own loss functions.

    One output column: binary cross-entropy; N columns: sparse categorical cross-entropy.
    Using Keras's functions (same clipping) makes the value match ``val_loss`` in history.csv.
    """
    import keras

    outputs = np.asarray(outputs, dtype=np.float32)
    if outputs.ndim == 1:
        outputs = outputs[:, None]
    true_indices = np.asarray(true_indices, dtype=np.int64).reshape(-1)
    if outputs.shape[1] == 1:
        targets = true_indices.astype(np.float32)[:, None]
        loss = keras.losses.binary_crossentropy(targets, outputs, from_logits=from_logits)
    else:
        loss = keras.losses.sparse_categorical_crossentropy(true_indices, outputs, from_logits=from_logits)
    return float(np.mean(keras.ops.convert_to_numpy(loss)))


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
    """
    from keras_cnn.config import RunConfig
    from keras_cnn.tta import trained_with_flips, view_names

    run = RunDirectory(run_dir).require()
    if subset not in SUBSETS:
        raise UserError(f"subset must be one of {SUBSETS}, received {subset!r}")
    config_payload = run.read_config()
    run_config = RunConfig.from_dict(config_payload)
    labels = run.read_labels()
    batch_size = int(batch_size or run_config.training.batch_size or DEFAULT_BATCH_SIZE)
    views = view_names(int(tta), trained_with_flips(run_config)) if tta else None
    if output_dir is None:
        output_dir = run.eval_dir if subset == "test" else run.eval_dir / subset
    # The run's lock: no evaluation of a model that a training process is replacing.
    with RunLock(run.root):
        return _evaluate_into(run, config_payload, run_config, labels, subset, batch_size, Path(output_dir), views)


def _evaluate_into(run: RunDirectory, config_payload, run_config, labels, subset, batch_size,
                   output_dir: Path, views: list[str] | None = None) -> dict[str, Any]:
    from keras_cnn import report

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
