"""Evaluation numbers from predictions: accuracy, precision / recall / F1, top-k, ROC AUC, confusion,
calibration and selective answers; for multi-label tasks mAP, per-label F1-optimal thresholds,
micro/macro F1, exact match and Hamming loss.

:func:`compute_metrics` turns true class indices and predicted probabilities into the
numbers of ``RUN/eval/metrics.json``; :func:`outputs_to_probabilities` and
:func:`cross_entropy` read a model's raw outputs.  How honest the probabilities are:
:func:`expected_calibration_error` (15 equal-width bins of the top-class confidence, the
table of :func:`reliability_bins`), :func:`negative_log_likelihood`, :func:`brier_score`,
together :func:`calibration_block`.  Answering only above a confidence threshold:
:func:`coverage_accuracy_curve`, :func:`threshold_for_accuracy`, :func:`selective_metrics`.
numpy and scipy only (Keras's loss functions for the cross-entropy, so it matches
``val_loss``), so they are cheap to test by hand.

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

from typing import Any, Sequence

import numpy as np

from keras_cnn.errors import RunFailure

TOP_K_CANDIDATES = (2, 3, 5)
MOST_CONFUSED_COUNT = 5


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
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(scores, dtype=np.float64).reshape(-1), method="average")
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


# --------------------------------------------------------------------------- calibration

CALIBRATION_BINS = 15


def _probabilities_and_truth(probabilities: Any, true_indices: Any) -> tuple[np.ndarray, np.ndarray]:
    probabilities = np.asarray(probabilities, dtype=np.float64)
    true_indices = np.asarray(true_indices, dtype=np.int64).reshape(-1)
    if probabilities.ndim != 2 or len(probabilities) != len(true_indices) or len(true_indices) == 0:
        raise ValueError(f"probabilities must have shape (n, classes) for {len(true_indices)} > 0 labels, "
                         f"received shape {probabilities.shape}")
    return probabilities, true_indices


def reliability_bins(probabilities: Any, true_indices: Any, bins: int = CALIBRATION_BINS) -> list[dict[str, float]]:
    """The reliability table: ``bins`` equal-width bins of the top-class confidence over (0, 1].

    Bin i holds the samples whose confidence lies in (i / bins, (i + 1) / bins] (a confidence
    of exactly 0 falls in the first); each row is ``{lower, upper, count, confidence,
    accuracy}``, the last two the bin's means (0 in an empty bin).
    """
    probabilities, true_indices = _probabilities_and_truth(probabilities, true_indices)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == true_indices
    # The first upper edge at or above the confidence (edges as np.linspace gives them, so 1/15 is on one).
    index = np.clip(np.searchsorted(np.linspace(0.0, 1.0, bins + 1)[1:], confidence, side="left"), 0, bins - 1)
    rows = []
    for number in range(bins):
        members = index == number
        count = int(members.sum())
        rows.append({"lower": number / bins, "upper": (number + 1) / bins, "count": count,
                     "confidence": float(confidence[members].mean()) if count else 0.0,
                     "accuracy": float(correct[members].mean()) if count else 0.0})
    return rows


def expected_calibration_error(probabilities: Any, true_indices: Any, bins: int = CALIBRATION_BINS) -> float:
    """ECE (Naeini et al., 2015; Guo et al., 2017): sum over bins of |accuracy - confidence| x the bin's share."""
    rows = reliability_bins(probabilities, true_indices, bins)
    total = sum(row["count"] for row in rows)
    return float(sum(abs(row["accuracy"] - row["confidence"]) * row["count"] for row in rows) / total)


def negative_log_likelihood(probabilities: Any, true_indices: Any) -> float:
    """Mean -log(probability of the true class); a probability of 0 counts as the smallest float64."""
    probabilities, true_indices = _probabilities_and_truth(probabilities, true_indices)
    true_probability = probabilities[np.arange(len(true_indices)), true_indices]
    return float(np.mean(-np.log(np.maximum(true_probability, np.finfo(np.float64).tiny))))


def brier_score(probabilities: Any, true_indices: Any) -> float:
    """Mean over samples of the squared distance between the probabilities and the one-hot truth
    (the multi-class Brier score: 0 is perfect, 2 the worst)."""
    probabilities, true_indices = _probabilities_and_truth(probabilities, true_indices)
    one_hot = np.zeros_like(probabilities)
    one_hot[np.arange(len(true_indices)), true_indices] = 1.0
    return float(np.mean(((probabilities - one_hot) ** 2).sum(axis=1)))


def calibration_block(before: Any, after: Any, true_indices: Any, temperature: float | None) -> dict[str, Any]:
    """``metrics.json``'s ``"calibration"``: the temperature and ECE, NLL, Brier before and after it."""
    block: dict[str, Any] = {"temperature": temperature}
    for name, function in (("ece", expected_calibration_error), ("nll", negative_log_likelihood),
                           ("brier", brier_score)):
        block[f"{name}_before"] = function(before, true_indices)
        block[f"{name}_after"] = function(after, true_indices)
    return block


# --------------------------------------------------------------------------- selective answers


def coverage_accuracy_curve(confidence: Any, correct: Any) -> dict[str, np.ndarray]:
    """Answering only above a threshold, for every threshold the data offers.

    Returns arrays, highest threshold first: ``threshold`` (each distinct confidence),
    ``coverage`` (the share of samples whose confidence is at least the threshold) and
    ``accuracy`` (the share of those that are right).
    """
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    if len(confidence) == 0 or len(confidence) != len(correct):
        raise ValueError(f"need as many confidences as right/wrong flags (> 0), received {len(confidence)} "
                         f"and {len(correct)}")
    order = np.argsort(-confidence, kind="stable")
    ordered, hits = confidence[order], np.cumsum(correct[order])
    # The last position of each run of equal confidences: a threshold accepts ties together.
    ends = np.flatnonzero(np.append(ordered[1:] != ordered[:-1], True))
    accepted = ends + 1
    return {"threshold": ordered[ends], "coverage": accepted / len(confidence), "accuracy": hits[ends] / accepted}


def threshold_for_accuracy(confidence: Any, correct: Any, target_accuracy: float) -> float | None:
    """The lowest threshold whose accepted samples (confidence >= threshold) reach ``target_accuracy``;
    None when no threshold does."""
    curve = coverage_accuracy_curve(confidence, correct)
    reaching = np.flatnonzero(curve["accuracy"] >= float(target_accuracy))
    return float(curve["threshold"][reaching[-1]]) if len(reaching) else None


def selective_metrics(confidence: Any, correct: Any, threshold: float) -> dict[str, Any]:
    """Coverage and accuracy when only samples with confidence >= ``threshold`` are answered.

    ``accuracy`` is None when nothing is accepted; ``accepted`` and ``num_samples`` are counts.
    """
    confidence = np.asarray(confidence, dtype=np.float64).reshape(-1)
    correct = np.asarray(correct, dtype=bool).reshape(-1)
    accepted = confidence >= float(threshold)
    count = int(accepted.sum())
    return {"threshold": float(threshold), "coverage": float(count / len(confidence)) if len(confidence) else 0.0,
            "accuracy": float(correct[accepted].mean()) if count else None,
            "accepted": count, "num_samples": int(len(confidence))}


def accuracy_lower_bound(right: int, count: int, confidence: float = 0.95) -> float:
    """The accuracy that ``right`` of ``count`` answers show with ``confidence``: the one-sided
    Clopper-Pearson lower bound (exact, from the binomial; 0 when nothing is right).

    43 right of 43 is only known to be above 0.933 (95 %): a threshold chosen for accuracy 0.99
    on so few images may well give less on others.
    """
    from scipy.stats import beta

    if count <= 0 or right <= 0:
        return 0.0
    return float(beta.ppf(1.0 - confidence, right, count - right + 1))


# --------------------------------------------------------------------------- multi-label
#
# A multi-label task gives each image any number of the labels (one independent sigmoid per
# label).  Targets are 0/1 matrices (n, N), probabilities (n, N); a label is predicted when its
# probability is at or above its threshold.  Conventions (scikit-learn's, zero_division=0):
#
# * average precision (AP) of a label is the area under its precision-recall curve as a step
#   function, sum over ranks of (R_k - R_{k-1}) P_k with tied scores taken together
#   (``sklearn.metrics.average_precision_score``); undefined (None) for a label without
#   positives, which then stays out of the macro mean (mAP);
# * micro averages pool every (image, label) decision; macro averages weigh labels equally.

DEFAULT_THRESHOLD = 0.5
MOST_MISSED_COUNT = 5


def _multi_label_arrays(targets: Any, probabilities: Any,
                        num_labels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(targets as a bool (n, N) array, probabilities as float64 (n, N)), checked."""
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim == 1:
        probabilities = probabilities[:, None]
    if targets.ndim == 1:
        targets = targets[:, None]
    if targets.shape != probabilities.shape:
        raise ValueError(f"targets and probabilities must have the same shape (n, labels), received "
                         f"{targets.shape} and {probabilities.shape}")
    if num_labels is not None and probabilities.shape[1] != num_labels:
        raise ValueError(f"probabilities must have shape (n, {num_labels}), received shape {probabilities.shape}")
    return targets > 0.5, probabilities


def average_precision(is_positive: Any, scores: Any) -> float | None:
    """Average precision of one label: sum of (R_k - R_{k-1}) x P_k over the distinct scores,
    highest first (ties taken together); None when there is no positive."""
    precision, recall, _ = precision_recall_curve(is_positive, scores)
    if len(precision) == 0:
        return None
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def precision_recall_curve(is_positive: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, threshold) at every distinct score, highest threshold first (a label's PR curve).

    Point k predicts the label for every image scoring at least ``threshold[k]``.  Empty
    arrays when there is no positive.
    """
    is_positive = np.asarray(is_positive, dtype=bool).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = int(is_positive.sum())
    if positives == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    scores, is_positive = scores[order], is_positive[order]
    ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
    true_positives = np.cumsum(is_positive)[ends]
    return true_positives / (ends + 1), true_positives / positives, scores[ends]


def best_f1_thresholds(targets: Any, probabilities: Any, default: float = DEFAULT_THRESHOLD) -> np.ndarray:
    """Per label, the threshold that maximises F1 on these predictions (``default`` without positives).

    A label is predicted when its probability is at or above its threshold.  Cutting after
    the k most probable images (ties taken together) gives F1 = 2 TP_k / (k + P); the best cut
    sits halfway between the lowest score it admits and the next one down, so the choice
    does not hang on one image's exact score.  Equal F1: the higher threshold (fewer labels
    added).
    """
    targets, probabilities = _multi_label_arrays(targets, probabilities)
    thresholds = np.full(probabilities.shape[1], float(default))
    for label in range(probabilities.shape[1]):
        positives = int(targets[:, label].sum())
        if positives == 0:
            continue
        order = np.argsort(-probabilities[:, label], kind="stable")
        scores, hits = probabilities[order, label], targets[order, label]
        ends = np.r_[np.flatnonzero(np.diff(scores) != 0), len(scores) - 1]
        f1 = 2.0 * np.cumsum(hits)[ends] / (ends + 1 + positives)
        best = int(np.argmax(f1))                 # the first maximum: the highest threshold
        admitted = scores[ends[best]]
        below = scores[ends[best] + 1] if ends[best] + 1 < len(scores) else 0.0
        thresholds[label] = float((admitted + below) / 2.0)
    return thresholds


def multi_label_predictions(probabilities: Any, thresholds: Any) -> np.ndarray:
    """Which labels are predicted: probability at or above the label's threshold (bool (n, N))."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities >= np.asarray(thresholds, dtype=np.float64)[None, :]


def hamming_loss(targets: Any, predicted: Any) -> float:
    """The fraction of (image, label) decisions that are wrong."""
    return float(np.mean(np.asarray(targets, dtype=bool) != np.asarray(predicted, dtype=bool)))


def exact_match_ratio(targets: Any, predicted: Any) -> float:
    """The fraction of images whose predicted label set is exactly the true one."""
    return float(np.mean(np.all(np.asarray(targets, dtype=bool) == np.asarray(predicted, dtype=bool), axis=1)))


def _label_counts(targets: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True positives, false positives (added) and false negatives (missed) per label."""
    return ((targets & predicted).sum(axis=0), (~targets & predicted).sum(axis=0),
            (targets & ~predicted).sum(axis=0))


def _ranked_labels(counts: np.ndarray, labels: Sequence[str], count: int) -> list[dict]:
    """The labels with the largest non-zero ``counts``: [{label, count}], largest first (ties in label order)."""
    order = sorted((index for index in range(len(labels)) if counts[index] > 0),
                   key=lambda index: (-int(counts[index]), index))
    return [{"label": labels[index], "count": int(counts[index])} for index in order[:count]]


def compute_multi_label_metrics(targets: Any, probabilities: Any, labels: Sequence[str], thresholds: Any = None,
                                loss: float | None = None) -> dict[str, Any]:
    """Every evaluation number of a multi-label task (see the notes above this function).

    ``targets``: (n, N) 0/1; ``probabilities``: (n, N) sigmoid outputs; ``thresholds``: (N,)
    per-label thresholds (default 0.5 each).  Returns a JSON-ready dict: num_samples,
    num_classes, labels, multi_label, thresholds {label: t}, loss, macro_map, micro_map,
    macro_/micro_ precision, recall, f1, exact_match, hamming_loss, label_accuracy
    (1 - hamming_loss), per_label {label: {precision, recall, f1, ap, support, threshold}},
    most_missed / most_added (up to 5 {label, count}: false negatives / false positives).
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("need at least 1 label")
    targets, probabilities = _multi_label_arrays(targets, probabilities, len(labels))
    if len(targets) == 0:
        raise ValueError("cannot compute metrics on 0 samples")
    thresholds = np.full(len(labels), DEFAULT_THRESHOLD) if thresholds is None else np.asarray(thresholds, np.float64)
    if thresholds.shape != (len(labels),):
        raise ValueError(f"thresholds must have one value per label ({len(labels)}), received shape {thresholds.shape}")
    predicted = multi_label_predictions(probabilities, thresholds)
    true_positives, added, missed = _label_counts(targets, predicted)
    precision = _safe_divide(true_positives, true_positives + added)
    recall = _safe_divide(true_positives, true_positives + missed)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    precisions = [average_precision(targets[:, index], probabilities[:, index]) for index in range(len(labels))]
    defined = [value for value in precisions if value is not None]
    micro_precision = float(_safe_divide(true_positives.sum(), true_positives.sum() + added.sum()))
    micro_recall = float(_safe_divide(true_positives.sum(), true_positives.sum() + missed.sum()))
    hamming = hamming_loss(targets, predicted)
    return {
        "num_samples": int(len(targets)),
        "num_classes": len(labels),
        "labels": labels,
        "multi_label": True,
        "thresholds": {label: float(value) for label, value in zip(labels, thresholds)},
        "loss": None if loss is None else float(loss),
        "macro_map": float(np.mean(defined)) if defined else None,
        "micro_map": average_precision(targets.reshape(-1), probabilities.reshape(-1)),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "micro_precision": micro_precision,
        "micro_recall": micro_recall,
        "micro_f1": float(_safe_divide(2 * micro_precision * micro_recall, micro_precision + micro_recall)),
        "exact_match": exact_match_ratio(targets, predicted),
        "hamming_loss": hamming,
        "label_accuracy": 1.0 - hamming,
        "per_label": {
            label: {"precision": float(precision[index]), "recall": float(recall[index]), "f1": float(f1[index]),
                    "ap": precisions[index], "support": int(targets[:, index].sum()),
                    "threshold": float(thresholds[index])}
            for index, label in enumerate(labels)
        },
        "most_missed": _ranked_labels(missed, labels, MOST_MISSED_COUNT),
        "most_added": _ranked_labels(added, labels, MOST_MISSED_COUNT),
    }


def label_decisions(probabilities: Any, targets: Any) -> tuple[np.ndarray, np.ndarray]:
    """Every (image, label) pair of a multi-label part as one yes/no decision, the way a binary run's
    image is scored: ``([1 - p, p]`` rows (n x N, 2), the truth as class indices 0 / 1 (n x N,)).

    On these the calibration numbers read as they do for any run: ECE over the confidence
    of each label's decision, NLL = the mean binary cross-entropy over every pair, Brier =
    twice the mean squared error of the probabilities."""
    targets, probabilities = _multi_label_arrays(targets, probabilities)
    flat = probabilities.reshape(-1, 1)
    return np.concatenate([1.0 - flat, flat], axis=1), targets.reshape(-1).astype(np.int64)


def multi_label_calibration_block(before: Any, after: Any, targets: Any, temperature: float | None) -> dict[str, Any]:
    """:func:`calibration_block` of a multi-label part: over every (image, label) pair (:func:`label_decisions`)."""
    before_pairs, truth = label_decisions(before, targets)
    return {**calibration_block(before_pairs, label_decisions(after, targets)[0], truth, temperature),
            "scored_on": "every (image, label) pair as one yes/no decision"}


def binary_cross_entropy(probabilities: Any, targets: Any) -> float:
    """Mean binary cross-entropy of sigmoid outputs against 0/1 (or soft) targets, by Keras's own
    function (so it matches ``val_loss`` of a multi-label run)."""
    import keras

    loss = keras.losses.binary_crossentropy(np.asarray(targets, np.float32), np.asarray(probabilities, np.float32))
    return float(np.mean(keras.ops.convert_to_numpy(loss)))
