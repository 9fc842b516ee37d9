"""A multi-label run's calibration (numpy): one temperature over every label's sigmoid, its numbers over
every (image, label) pair, and the labels' thresholds chosen after it on the calibrated probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from keras_cnn import calibration, metrics
from keras_cnn.run_calibration import LabelPredictions, fit_record, multi_label_answers, part_block

LABELS = ["a", "b", "c", "d"]


def sigmoid(values):
    return 1.0 / (1.0 + np.exp(-values))


def overconfident_part(count: int, seed: int, inflation: float = 3.0) -> tuple[LabelPredictions, np.ndarray]:
    """Logits ``inflation`` times too large for targets drawn from the honest ones (each label its own
    offset, so the labels' thresholds differ); returns the predictions and the honest logits."""
    generator = np.random.default_rng(seed)
    honest = generator.normal(0, 1.5, size=(count, len(LABELS))) + np.array([-1.5, -0.5, 0.0, 1.0])
    targets = (generator.uniform(size=honest.shape) < sigmoid(honest)).astype(np.float64)
    logits = inflation * honest
    return LabelPredictions(sigmoid(logits).astype(np.float32), logits, targets), honest


def test_every_image_label_pair_is_scored_as_one_binary_decision():
    probabilities = np.array([[0.9, 0.2, 0.62], [0.33, 0.81, 0.1]])
    targets = np.array([[1, 0, 0], [1, 1, 0]])
    pairs, truth = metrics.label_decisions(probabilities, targets)
    np.testing.assert_allclose(pairs[:, 1], probabilities.ravel())
    np.testing.assert_array_equal(truth, targets.ravel())
    after = np.array([[0.8, 0.3, 0.55], [0.35, 0.7, 0.2]])
    block = metrics.multi_label_calibration_block(probabilities, after, targets, 1.5)
    flat, expected = probabilities.ravel(), targets.ravel()
    bce = -np.mean(expected * np.log(flat) + (1 - expected) * np.log(1 - flat))
    assert block["nll_before"] == pytest.approx(bce)
    assert block["brier_before"] == pytest.approx(2 * np.mean((flat - expected) ** 2))
    # ECE over the confidence of each decision, max(p, 1 - p), against how often the decision is right
    # (15 bins (i/15, (i+1)/15]; 0.9 and 0.1 share one).
    confidence = np.maximum(flat, 1 - flat)
    right = ((flat >= 0.5) == (expected == 1)).astype(float)
    bins = np.ceil(confidence * 15).astype(int) - 1
    by_hand = sum(abs(right[bins == number].mean() - confidence[bins == number].mean()) * (bins == number).sum()
                  for number in set(bins)) / len(flat)
    assert block["ece_before"] == pytest.approx(by_hand)
    assert block["temperature"] == 1.5 and block["nll_after"] != block["nll_before"]
    # One label scores exactly as a binary run's image does.
    single = metrics.multi_label_calibration_block(probabilities[:, :1], after[:, :1], targets[:, :1], 1.5)
    binary = metrics.calibration_block(np.c_[1 - probabilities[:, :1], probabilities[:, :1]],
                                       np.c_[1 - after[:, :1], after[:, :1]], targets[:, 0], 1.5)
    assert {key: single[key] for key in binary} == pytest.approx(binary)


def test_one_temperature_is_fitted_over_all_labels_then_the_thresholds_on_calibrated_probabilities():
    validation, honest = overconfident_part(3000, 1)
    test, _ = overconfident_part(1000, 2)
    answers = multi_label_answers(validation, test, LABELS, "train")
    record = answers["calibration"]
    temperature = record["temperature"]
    assert record["multi_label"] and record["kind"] == "sigmoid" and record["stage"] == "train"
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert record["fitted_on"] == {"part": "validation", "images": 3000}
    for part in ("validation", "test"):
        block = record[part]
        assert block["ece_after"] < block["ece_before"] / 2 and block["nll_after"] < block["nll_before"]
        assert block["scored_on"].startswith("every (image, label) pair")
    # The calibrated NLL is that of the honest logits (what temperature scaling can recover).
    assert record["validation"]["nll_after"] == pytest.approx(
        metrics.negative_log_likelihood(*metrics.label_decisions(sigmoid(honest), validation.targets)), rel=0.02)
    # The thresholds: best F1 per label on the calibrated validation probabilities.
    calibrated = calibration.apply_temperature(validation.logits, temperature, "sigmoid")
    chosen = answers["thresholds"]
    assert chosen["temperature"] == temperature
    np.testing.assert_array_equal([chosen["thresholds"][label] for label in LABELS],
                                  metrics.best_f1_thresholds(validation.targets, calibrated))
    # The test part: calibrated probabilities at those thresholds; the loss is the model's own.
    expected = metrics.compute_multi_label_metrics(
        test.targets, calibration.apply_temperature(test.logits, temperature, "sigmoid"), LABELS,
        [chosen["thresholds"][label] for label in LABELS])
    assert answers["test"]["macro_f1"] == pytest.approx(expected["macro_f1"])
    assert answers["test"]["exact_match"] == pytest.approx(expected["exact_match"])
    assert answers["test"]["loss"] == pytest.approx(metrics.binary_cross_entropy(test.outputs, test.targets))
    # Without calibration the thresholds are those of the model's own probabilities: other numbers.
    plain = multi_label_answers(validation, test, LABELS, "train", calibrate=False)
    assert plain["calibration"] is None and plain["thresholds"]["temperature"] is None
    raw = [plain["thresholds"]["thresholds"][label] for label in LABELS]
    np.testing.assert_array_equal(raw, metrics.best_f1_thresholds(validation.targets, validation.probabilities(None)))
    assert not np.allclose(raw, [chosen["thresholds"][label] for label in LABELS], atol=0.01)


def test_an_honest_model_keeps_its_temperature_and_a_run_without_validation_keeps_one_half():
    validation, _ = overconfident_part(4000, 3, inflation=1.0)
    record = fit_record(validation, None, "head")
    assert record["temperature"] == pytest.approx(1.0, abs=0.08) and "test" not in record
    answers = multi_label_answers(None, validation, LABELS, "head")
    assert answers["calibration"] is None and answers["thresholds"]["chosen_on"] is None
    assert set(answers["thresholds"]["thresholds"].values()) == {metrics.DEFAULT_THRESHOLD}
    assert answers["test"]["thresholds"] == dict.fromkeys(LABELS, metrics.DEFAULT_THRESHOLD)
    block = part_block(validation, None)
    assert block["ece_after"] is None and block["ece_before"] > 0 and "not calibrated" in block["note"]
