"""Temperature scaling, calibration and selective metrics, "none of these", heat-map coordinates (numpy only),
and temperature scaling of a real overconfident network."""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_cnn import calibration, metrics  # noqa: E402
from keras_cnn.heatmaps import input_region, overlay, peak, peak_on_image  # noqa: E402


def softmax(values):
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def drawn_labels(logits, seed):
    """Labels drawn from softmax(logits): for these logits, T = 1 is the calibrated temperature."""
    generator = np.random.default_rng(seed)
    probabilities = softmax(logits)
    return np.array([generator.choice(len(row), p=row) for row in probabilities])


def test_temperature_recovers_how_much_the_logits_were_inflated():
    generator = np.random.default_rng(0)
    honest = generator.normal(0, 2, size=(4000, 5))
    labels = drawn_labels(honest, 1)
    fit = calibration.fit_temperature(3.0 * honest, labels)          # an overconfident model's logits
    assert fit.temperature == pytest.approx(3.0, rel=0.08)
    assert fit.nll_after < fit.nll_before and not fit.at_bound
    assert fit.nll_after == pytest.approx(calibration.negative_log_likelihood(honest, labels), rel=0.02)
    sharpened = calibration.fit_temperature(0.5 * honest, labels)    # an underconfident one's
    assert sharpened.temperature == pytest.approx(0.5, rel=0.08)
    # The order of the classes never changes.
    scaled = calibration.apply_temperature(3.0 * honest, fit.temperature)
    assert (scaled.argmax(axis=1) == honest.argmax(axis=1)).all()


def test_sigmoid_units_are_fitted_on_their_own_likelihood():
    generator = np.random.default_rng(2)
    honest = generator.normal(0, 2, size=(3000, 1))
    targets = (generator.uniform(size=honest.shape) < 1 / (1 + np.exp(-honest))).astype(float)
    fit = calibration.fit_temperature(4.0 * honest, targets, kind="sigmoid")
    assert fit.temperature == pytest.approx(4.0, rel=0.1)
    # A binary head's class table is [1 - p, p], p = sigmoid(z / T) = softmax([0, z] / T)[1].
    table = calibration.class_probabilities(4.0 * honest[:5], fit.temperature, "sigmoid")
    expected = softmax(np.concatenate([np.zeros((5, 1)), 4.0 * honest[:5]], axis=1) / fit.temperature)
    np.testing.assert_allclose(table, expected, atol=1e-12)
    np.testing.assert_array_equal(calibration.single_label_targets([0, 1, 1], "sigmoid").ravel(), [0, 1, 1])


def test_apply_temperature_is_stable_for_huge_logits_and_refuses_nonsense():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    np.testing.assert_allclose(calibration.apply_temperature(logits, 1.0), [[1, 0, 0]], atol=1e-300)
    assert np.isfinite(calibration.apply_temperature(np.array([[-800.0], [800.0]]), 1.0, "sigmoid")).all()
    assert calibration.negative_log_likelihood(logits, [2]) == pytest.approx(2000.0)
    with pytest.raises(ValueError, match="class indices"):
        calibration.fit_temperature(logits, [3])
    with pytest.raises(ValueError, match="finite"):
        calibration.fit_temperature(np.array([[np.nan, 1.0]]), [0])
    # Probabilities rounded to 0 and 1 give finite logits back.
    assert np.isfinite(calibration.logits_from_probabilities(np.array([[1.0, 0.0]]))).all()


def test_a_validation_part_without_mistakes_sharpens_but_keeps_the_temperature_finite():
    # The likelihood alone keeps falling towards T = 0 here; the prior on log T stops it.
    logits = np.array([[3.0, 0.0], [0.0, 2.0], [4.0, 1.0]] * 20)
    fit = calibration.fit_temperature(logits, [0, 1, 0] * 20)
    assert 0.2 < fit.temperature < 1.0 and not fit.at_bound
    assert calibration.apply_temperature(logits, fit.temperature).max() < 1.0 - 1e-6
    # With evidence either way the prior is negligible: T = 3 comes back from 4000 images.
    generator = np.random.default_rng(5)
    honest = generator.normal(0, 2, size=(4000, 3))
    assert calibration.fit_temperature(3 * honest, drawn_labels(honest, 6)).temperature == pytest.approx(3.0, rel=0.08)


def test_calibration_metrics_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
    truth = np.array([0, 1, 1, 0])
    # Confidences 0.9 (right), 0.6 (wrong), 0.7 (right), 0.55 (right); 15 bins of width 1/15:
    # 0.9 -> bin 13, 0.6 -> bin 8, 0.7 -> bin 10, 0.55 -> bin 8.
    rows = metrics.reliability_bins(probabilities, truth)
    assert [row["count"] for row in rows if row["count"]] == [2, 1, 1]
    assert rows[8]["accuracy"] == 0.5 and rows[8]["confidence"] == pytest.approx(0.575)
    expected_ece = (2 * abs(0.5 - 0.575) + abs(1 - 0.7) + abs(1 - 0.9)) / 4
    assert metrics.expected_calibration_error(probabilities, truth) == pytest.approx(expected_ece)
    assert metrics.negative_log_likelihood(probabilities, truth) == pytest.approx(
        -np.mean(np.log([0.9, 0.4, 0.7, 0.55])))
    assert metrics.brier_score(probabilities, truth) == pytest.approx(
        np.mean([2 * 0.1 ** 2, 2 * 0.6 ** 2, 2 * 0.3 ** 2, 2 * 0.45 ** 2]))
    # A confidence of exactly 1/15 belongs to the first bin (bins are closed on the right).
    edge = np.full((1, 15), 1 / 15)
    assert metrics.reliability_bins(edge, [0])[0]["count"] == 1
    assert metrics.reliability_bins(np.array([[1.0, 0.0]]), [0])[-1]["count"] == 1
    block = metrics.calibration_block(probabilities, softmax(np.log(probabilities) / 2), truth, 2.0)
    assert set(block) == {"temperature", "ece_before", "ece_after", "nll_before", "nll_after", "brier_before",
                          "brier_after"}


def test_threshold_for_accuracy_is_the_lowest_that_reaches_it():
    confidence = np.array([0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5])
    correct = np.array([True, True, False, True, True, False, True])
    curve = metrics.coverage_accuracy_curve(confidence, correct)
    np.testing.assert_allclose(curve["threshold"], [0.95, 0.9, 0.8, 0.7, 0.6, 0.5])
    np.testing.assert_allclose(curve["coverage"], np.array([1, 3, 4, 5, 6, 7]) / 7)   # ties go together
    np.testing.assert_allclose(curve["accuracy"], [1, 2 / 3, 3 / 4, 4 / 5, 4 / 6, 5 / 7])
    assert metrics.threshold_for_accuracy(confidence, correct, 0.75) == 0.7
    assert metrics.threshold_for_accuracy(confidence, correct, 0.7) == 0.5        # 5/7 = 0.714 reaches it
    assert metrics.threshold_for_accuracy(confidence, ~correct, 0.99) is None
    result = metrics.selective_metrics(confidence, correct, 0.7)
    assert result == {"threshold": 0.7, "coverage": 5 / 7, "accuracy": 0.8, "accepted": 5, "num_samples": 7}
    assert metrics.selective_metrics(confidence, correct, 0.99)["accuracy"] is None


def test_the_accuracy_a_threshold_rests_on_is_the_exact_binomial_lower_bound():
    from scipy.stats import binom

    # All right: the bound solves p ** n = 0.05; 43 of 43 is only known to be above 0.933.
    assert metrics.accuracy_lower_bound(43, 43) == pytest.approx(0.05 ** (1 / 43))
    assert metrics.accuracy_lower_bound(43, 43) < 0.99 < metrics.accuracy_lower_bound(400, 400)
    # Otherwise: at the bound, seeing at least as many right answers has probability 5 %.
    bound = metrics.accuracy_lower_bound(88, 91)
    assert binom.sf(88 - 1, 91, bound) == pytest.approx(0.05, abs=1e-9)
    assert metrics.accuracy_lower_bound(0, 5) == 0.0 and metrics.accuracy_lower_bound(0, 0) == 0.0


def test_an_answer_is_rejected_exactly_below_the_threshold():
    from keras_cnn.predict import rejection

    threshold = 0.41
    assert rejection(threshold, threshold) == {"rejected": False, "reject_below": threshold}
    assert rejection(np.nextafter(threshold, 0), threshold)["rejected"] is True
    assert rejection(np.nextafter(threshold, 1), threshold)["rejected"] is False


def test_out_of_distribution_scores():
    logits = np.array([[2.0, 0.0], [0.5, 0.4]])
    scores = calibration.out_of_distribution_scores(logits, 2.0)
    np.testing.assert_allclose(scores["energy"], 2.0 * np.log(np.exp(logits / 2.0).sum(axis=1)))
    np.testing.assert_allclose(scores["max_logit"], [2.0, 0.5])
    np.testing.assert_allclose(scores["max_probability"], softmax(logits / 2.0).max(axis=1))
    binary = calibration.out_of_distribution_scores(np.array([[3.0]]), 1.0, "sigmoid")
    assert binary["max_probability"][0] == pytest.approx(1 / (1 + np.exp(-3.0)))


@pytest.mark.parametrize("mode, shape, map_peak, expected", [
    # stretch: relative coordinates are the same on the image and on the model's input.
    ("stretch", (50, 100), (2, 9), [0.25, 0.95]),
    # crop: the model saw the centre 50 x 50 of a 50 x 100 image (columns 25..75).
    ("crop", (50, 100), (2, 9), [0.25, 0.25 + 0.95 * 0.5]),
    # pad: a 50 x 100 image is fitted to 5 x 10 pixels, rows 2..7 of the 10 x 10 input.
    ("pad", (50, 100), (5, 9), [(0.55 - 0.2) / 0.5, 0.95]),
])
def test_peak_on_the_image_as_given(mode, shape, map_peak, expected):
    heatmap = np.zeros((10, 10))
    heatmap[map_peak] = 1.0
    assert peak(heatmap) == ((map_peak[0] + 0.5) / 10, (map_peak[1] + 0.5) / 10)
    assert peak_on_image(heatmap, *shape, mode) == pytest.approx(expected, abs=1e-9)


def test_pad_region_matches_the_export_and_overlay_keeps_the_picture_size():
    from PIL import Image

    region = input_region(50, 100, (10, 10), "pad")
    assert region["input"] == (0.2, 0.0, 0.7, 1.0) and region["image"] == (0.0, 0.0, 1.0, 1.0)
    picture = Image.fromarray(np.full((50, 100, 3), 128, np.uint8))
    heatmap = np.zeros((10, 10), np.float32)
    heatmap[4, 9] = 1.0
    drawn = np.asarray(overlay(picture, heatmap, "pad"))
    assert drawn.shape == (50, 100, 3)
    # Coloured near the peak (right edge, middle rows), untouched far from it.
    assert np.abs(drawn[20:30, 90:].astype(int) - 128).max() > 30
    assert np.abs(drawn[:5, :10].astype(int) - 128).max() == 0


@pytest.fixture(scope="module")
def overconfident_net():
    """A small dense net trained long on labels of which a third are wrong: it memorises them."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    generator = np.random.default_rng(0)
    centres = generator.normal(0, 1.2, size=(4, 16))

    def draw(count, noise):
        labels = generator.integers(0, 4, count)
        features = centres[labels] + generator.normal(0, 1, (count, 16))
        wrong = generator.uniform(size=count) < noise
        return features.astype("float32"), np.where(wrong, (labels + generator.integers(1, 4, count)) % 4, labels)

    train, validation, test = draw(400, 0.33), draw(600, 0.0), draw(600, 0.0)
    inputs = keras.Input((16,))
    hidden = keras.layers.Dense(128, activation="relu")(inputs)
    hidden = keras.layers.Dense(128, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(4, activation="softmax", name="predictions")(hidden))
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy")
    # 400 batches in one epoch: the per-epoch overhead of fit, not the steps, would cost the time.
    batches = tf.data.Dataset.from_tensor_slices(train).shuffle(400, seed=0).repeat().batch(64)
    model.fit(batches, epochs=1, steps_per_epoch=400, shuffle=False, verbose=0)
    return model, validation, test


def test_temperature_scaling_lowers_the_nll_of_an_overconfident_net_and_keeps_its_accuracy(overconfident_net):
    from keras_cnn.models.opened import open_model

    model, validation, test = overconfident_net
    opened = open_model(model)

    def logits_of(features):
        return np.asarray(opened.logits(opened.graph(features)["penultimate"]), dtype=np.float64)

    fit = calibration.fit_temperature(logits_of(validation[0]), validation[1])
    assert fit.temperature > 1.5   # it memorised wrong labels: overconfident
    test_logits = logits_of(test[0])
    before = calibration.class_probabilities(test_logits, None, "softmax")
    after = calibration.class_probabilities(test_logits, fit.temperature, "softmax")
    np.testing.assert_allclose(before, np.asarray(model(test[0])), atol=1e-5)   # the logits are the model's
    assert metrics.negative_log_likelihood(after, test[1]) < metrics.negative_log_likelihood(before, test[1])
    assert metrics.expected_calibration_error(after, test[1]) < metrics.expected_calibration_error(before, test[1])
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
