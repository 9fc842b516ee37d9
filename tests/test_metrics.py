"""Evaluation metrics against hand-computed values."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from keras_cnn.metrics import compute_metrics, cross_entropy, outputs_to_probabilities, per_class_accuracy, roc_auc, top_k_accuracy

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
    metrics = compute_metrics(TRUE, PROBABILITIES, LABELS, loss=0.5)

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
    metrics = compute_metrics(TRUE, PROBABILITIES, LABELS)
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
    metrics = compute_metrics(TRUE, PROBABILITIES, LABELS)
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
    assert top_k_accuracy([2, 0], [[0.5, 0.25, 0.25], [0.1, 0.2, 0.7]], 2) == 0.5
    six = np.eye(6)[[5, 4, 3, 2, 1, 0]] * 0.5 + 0.5 / 6
    metrics = compute_metrics([0, 1, 2, 3, 4, 5], six, list("abcdef"))
    assert {"top_2_accuracy", "top_3_accuracy", "top_5_accuracy"} <= set(metrics)
    assert metrics["top_5_accuracy"] == 1.0 and metrics["accuracy"] == 0.0
    assert len(metrics["most_confused"]) == 5


def test_binary_roc_auc_by_ranks_with_ties_matches_pair_counting():
    # positives score 0.35, 0.8, 0.4; negatives 0.1, 0.4, 0.4.
    # Pairs won by the positive: 0.35 -> 1 (vs 0.1), 0.8 -> 3, 0.4 -> 1 + two ties (1/2 each) = 2.
    # AUC = (1 + 3 + 2) / 9 = 2/3.
    true = [0, 0, 1, 1, 0, 1]
    positive_probability = [0.1, 0.4, 0.35, 0.8, 0.4, 0.4]
    assert close(roc_auc(np.array(true) == 1, positive_probability), Fraction(2, 3))
    # A one-sigmoid model: the caller may pass p alone; it is expanded to [1 - p, p].
    metrics = compute_metrics(true, np.array(positive_probability)[:, None], ["no", "yes"])
    assert close(metrics["roc_auc"], Fraction(2, 3))
    assert metrics["confusion_matrix"] == [[3, 0], [2, 1]]   # only 0.8 is above 0.5
    assert "top_2_accuracy" not in metrics
    # Undefined with only one class present.
    assert compute_metrics([1, 1], [[0.2, 0.8], [0.6, 0.4]], ["no", "yes"])["roc_auc"] is None


def test_undefined_ratios_are_zero_and_per_class_accuracy_is_recall():
    # "c" is never predicted (precision 0/0) and has no samples (recall 0/0).
    metrics = compute_metrics([0, 1, 1], [[0.9, 0.1, 0.0], [0.8, 0.2, 0.0], [0.1, 0.9, 0.0]],
                                       ["a", "b", "c"])
    assert metrics["per_class"]["c"] == {
        "precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "accuracy": 0.0,
    }
    json.dumps(metrics, allow_nan=False)
    accuracy = per_class_accuracy([0, 0, 1, 2], [0, 1, 1, 1], ["x", "y", "z"])
    assert accuracy == {"x": 0.5, "y": 1.0, "z": 0.0}


def test_bad_inputs_name_the_received_values():
    with pytest.raises(ValueError, match=r"shape \(n, 3\).*\(2, 2\)"):
        compute_metrics([0, 1], [[0.5, 0.5], [0.5, 0.5]], LABELS)
    with pytest.raises(ValueError, match="0..2.*7"):
        compute_metrics([0, 7], [[1, 0, 0], [0, 1, 0]], LABELS)
    with pytest.raises(ValueError, match="2 vs 1"):
        compute_metrics([0, 1], [[1, 0, 0]], LABELS)


def test_outputs_to_probabilities_and_cross_entropy():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    probabilities = outputs_to_probabilities(logits, 3, from_logits=True)
    assert np.allclose(probabilities.sum(axis=1), 1.0) and np.allclose(probabilities[1], 1 / 3)
    expected = -np.mean(np.log([probabilities[0, 0], probabilities[1, 2]]))
    assert cross_entropy(logits, [0, 2], from_logits=True) == pytest.approx(expected, rel=1e-5)
    sigmoid = outputs_to_probabilities(np.array([[0.25], [0.9]]), 2)
    assert sigmoid.tolist() == [[0.75, 0.25], [pytest.approx(0.1), 0.9]]
    expected = -np.mean(np.log([0.75, 0.9]))
    assert cross_entropy([[0.25], [0.9]], [0, 1]) == pytest.approx(expected, rel=1e-5)
