"""The learning-rate range test: suggestions, divergence stop, weights left untouched."""

import numpy as np
import pytest

from keras_cnn.errors import UserError
from keras_cnn.train.lr_sweep import (find_learning_rate, run_sweep, steepest_index, suggest_learning_rates,
                                       sweep_rates, valley_index)


def test_sweep_rates_are_exponential_from_start_to_end():
    rates = sweep_rates(1e-7, 10, 100)
    assert rates[0] == pytest.approx(1e-7) and rates[-1] == pytest.approx(10)
    np.testing.assert_allclose(rates[1:] / rates[:-1], rates[1] / rates[0])


def test_valley_is_half_way_along_the_longest_fall_and_steepest_at_the_fastest_drop():
    losses = np.array([2.0, 2.1, 2.0, 1.9, 1.5, 1.2, 1.1, 1.0, 0.95, 1.3, 3.0])
    assert valley_index(losses) == 4          # the longest fall: index 1 (2.1) down to 8 (0.95)
    rates = np.geomspace(1e-4, 1, len(losses))
    assert steepest_index(rates, losses) == 3  # 1.9 -> 1.5 is the biggest drop per decade


def test_suggestions_ignore_the_noisy_start_and_the_blow_up():
    rates = np.geomspace(1e-7, 10, 100)
    # A noisy dip in the first tenth and a crash in the last five must not be chosen.
    losses = np.concatenate([[5.0, 0.1, 5.0], np.full(37, 2.0), np.linspace(2.0, 0.5, 40), np.linspace(0.6, 3, 15),
                             [0.0, 0.0, 0.0, 0.0, 0.0]])
    suggestions = suggest_learning_rates(rates, losses)
    assert rates[40] < suggestions["steepest"] < rates[80]
    assert rates[40] <= suggestions["valley"] < rates[80]


def test_run_sweep_stops_when_the_smoothed_loss_diverges():
    def train_step(rate):
        return 1.0 if rate < 1e-2 else 1e6

    sweep = run_sweep(train_step, sweep_rates(1e-7, 10, 100))
    assert sweep.diverged
    assert len(sweep.losses) < 100
    assert sweep.learning_rates[-1] >= 1e-2


def test_too_short_a_sweep_is_a_user_error():
    with pytest.raises(UserError, match="diverged after"):
        suggest_learning_rates([1e-3] * 6, [1.0] * 6)


def test_find_learning_rate_leaves_the_weights_as_they_were():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    images = np.random.default_rng(0).normal(size=(64, 8)).astype("float32")
    labels = (images[:, 0] > 0).astype("int32")
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2, activation="softmax")])
    before = [weight.copy() for weight in model.get_weights()]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(16)
    sweep = find_learning_rate(model, dataset, "sparse_categorical_crossentropy", "sgd", start=1e-4, end=100,
                               steps=60)
    assert sweep.diverged and len(sweep.losses) < 60
    assert min(sweep.smoothed) < sweep.smoothed[0]     # it did train while sweeping
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    suggestions = sweep.suggestions()
    assert 1e-4 < suggestions["valley"] < 100 and 1e-4 < suggestions["steepest"] < 100
